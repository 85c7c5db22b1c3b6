"""``python -m inprocserve`` on bad input: a one-line error and the documented exit status, never a traceback.

quantize never overwrites its source and never leaves a half-written target; quantize and status refuse
numbers they cannot use; status refuses a malformed status document; the fleet commands and validate see a
repository that links its versions (docs/repository.md's release folders); a missing file is exit status 2.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inprocserve import ModelConfig, PoolConfig
from inprocserve.__main__ import main
from inprocserve._control import ControlFile, switched
from inprocserve.testing import build_add_model, build_mlp_model, build_scale_model, save_model

from .interruptible import STOPPED_WHILE_ONNXRUNTIME_LOADS, interruptible, measuring, signal_dropped_as_it_loads

pytest.importorskip("onnx")  # quantize needs the "quantize" extra; testing's model builders need onnx too


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inprocserve", *args], capture_output=True, text=True, check=False, timeout=120
    )


def usage_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``main(args)``, expect argparse's usage error (exit status 2), return its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# -- quantize ------------------------------------------------------------------------------------------


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    return save_model(build_mlp_model((8, 16, 3), seed=1), tmp_path, "mlp", 1)


@pytest.mark.parametrize("how", ["same path", "symbolic link", "hard link", "dot-dot path"])
def test_quantize_refuses_to_overwrite_its_source(
    mlp: Path, tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = mlp.read_bytes()
    target = {
        "same path": mlp,
        "symbolic link": tmp_path / "link.onnx",
        "hard link": tmp_path / "hard.onnx",
        "dot-dot path": mlp.parent / ".." / mlp.parent.name / mlp.name,
    }[how]
    if how == "symbolic link":
        target.symlink_to(mlp)
    elif how == "hard link":
        os.link(mlp, target)
    assert main(["quantize", "--seconds", "0.01", "--sample", "4", str(mlp), str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is the source model itself" in err and err.count("\n") == 1
    assert mlp.read_bytes() == before
    assert sorted(p.name for p in mlp.parent.iterdir()) == ["model.onnx"]  # no temporary file left


def test_quantize_replaces_the_target_only_when_it_succeeded(
    mlp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inprocserve._quantize as quantize_module

    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    target.write_bytes(b"the release before")
    real_session = quantize_module._session

    def quantized_model_breaks(path: Path) -> Any:
        if path != mlp:
            raise RuntimeError("the quantized model does not load")
        return real_session(path)

    monkeypatch.setattr(quantize_module, "_session", quantized_model_breaks)
    assert main(["quantize", "--seconds", "0.01", "--sample", "4", str(mlp), str(target)]) == 1
    assert target.read_bytes() == b"the release before"
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]  # no half file, no temporary file

    monkeypatch.setattr(quantize_module, "_session", real_session)
    assert main(["quantize", "--seconds", "0.01", "--sample", "4", str(mlp), str(target)]) == 0
    assert target.read_bytes().startswith(b"\x08")  # an ONNX protobuf now
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as readable as any new file, not 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_quantize_a_missing_source_or_target_folder_could_not_run(
    mlp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["quantize", str(tmp_path / "nope.onnx"), str(tmp_path / "q.onnx")]) == 2
    assert "no such model file" in capsys.readouterr().err
    assert main(["quantize", str(mlp), str(tmp_path / "3" / "model.onnx")]) == 2
    assert "does not exist; create it first" in capsys.readouterr().err


def test_quantize_into_a_folder_that_is_a_file_says_it_is_a_file(
    mlp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`quantize model.onnx release/q.onnx`, where release is a file (a tarball, a notes file of that name): it said
    "the target's folder release does not exist; create it first", and creating it failed: it does exist."""
    somefile = tmp_path / "release"
    somefile.write_text("notes")
    assert main(["quantize", "--seconds", "0.01", "--sample", "4", str(mlp), str(somefile / "q.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert f"{somefile} is a file, not a folder" in err and "does not exist" not in err, err
    assert somefile.read_text() == "notes"


def test_quantize_to_a_folder_names_the_folder_before_it_quantizes(
    mlp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`quantize model.onnx out/` quantized and measured the model, then failed to rename its temporary file
    over the folder: "error: [Errno 21] Is a directory: '.out.1f2e....tmp' -> 'out'"."""
    target = tmp_path / "out"
    target.mkdir()
    monkeypatch.chdir(tmp_path)
    for given in (str(target), ""):  # ("" is the current folder: "Device or resource busy: '..3a9f.tmp' -> '.'")
        assert main(["quantize", "--seconds", "0.01", "--sample", "4", str(mlp), given]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert "is a folder" in err and "model.onnx" in err and ".tmp" not in err, err
    assert list(target.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp", "out"]  # no temporary file left


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_quantize_stopped_from_outside_leaves_no_temporary_file(mlp: Path, tmp_path: Path, stop: int) -> None:
    """`timeout 60 python -m inprocserve quantize ...` (or docker stop, a cancelled CI job): SIGTERM killed the
    command on the spot and left its hidden .TARGET.<hex>.tmp, a whole model, beside TARGET, one more per run
    stopped; Ctrl-C ended in a KeyboardInterrupt traceback."""
    target = tmp_path / "out" / "q.onnx"
    target.parent.mkdir()
    command = [sys.executable, "-m", "inprocserve", "quantize", "--seconds", "60", str(mlp), str(target)]
    # (interruptible: a shell ignores SIGINT in its background commands, as CI's may run this one)
    with measuring(command, target.parent) as process:
        assert [p.name.endswith(".tmp") for p in target.parent.iterdir()] == [True]  # being measured now
        process.send_signal(stop)
        _, err = process.communicate(timeout=45)
    assert process.returncode == 128 + stop, err
    stopped_by = signal.Signals(stop).name
    assert err == f"error: stopped by {stopped_by} before the quantized model was written; {target} was not written\n"
    assert list(target.parent.iterdir()) == []


# ``python -m stopped_in_eval [--in-a-program] ARGS``: ``python -m inprocserve ARGS`` (or, with --in-a-program, a
# program that runs its main()) with Ctrl-C's signal arriving in code run by ``eval()`` of a string, after the
# quantized model is written: as numpy.random, imported as quantize compares the two models, makes a namedtuple
# (whose ``eval()`` compiles its ``__new__``, and the handler runs as the compiled code starts).
_STOPPED_IN_EVAL = """
import runpy, signal, sys
import inprocserve._quantize as quantizing
compare = quantizing._compare
def compare_stopped_in_eval(*args, **kwargs):
    eval("signal.raise_signal(signal.SIGINT)", {"signal": signal})
    return compare(*args, **kwargs)
quantizing._compare = compare_stopped_in_eval
in_a_program = sys.argv[1] == "--in-a-program"
del sys.argv[1 : 1 + in_a_program]
runpy.run_module("inprocserve", run_name="__main__", alter_sys=not in_a_program)
"""


@pytest.mark.parametrize("how", ["the command", "in a program"])
def test_quantize_stopped_in_an_eval_exits_130(mlp: Path, tmp_path: Path, how: str) -> None:
    """A Ctrl-C whose KeyboardInterrupt left the code of an ``eval()`` of a string (numpy.random's namedtuple,
    as quantize compares the models) unwound the command, its one line said so, and then its process died of
    SIGINT (-2) instead of exiting 130: CPython takes such a KeyboardInterrupt for one nobody caught, and
    ``python -m`` ends the process by SIGINT at exit, whatever status it returns; a program running main()
    was killed by it as well, after it went on."""
    (tmp_path / "stopped_in_eval.py").write_text(_STOPPED_IN_EVAL)
    target = tmp_path / "out" / "q.onnx"
    target.parent.mkdir()
    option = ["--in-a-program"] if how == "in a program" else []
    result = subprocess.run(
        [sys.executable, "-m", "stopped_in_eval", *option, "quantize", "--seconds", "60", str(mlp), str(target)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        preexec_fn=interruptible,
        timeout=120,
    )
    assert result.returncode == 128 + signal.SIGINT, result.stderr
    line = f"error: stopped by SIGINT before the quantized model was written; {target} was not written\n"
    assert result.stderr == line
    assert list(target.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("option", "value"),
    [("--sample", "0"), ("--sample", "-1"), ("--seconds", "0"), ("--seconds", "-1"), ("--seconds", "nan")],
)
def test_quantize_refuses_numbers_it_cannot_use(
    mlp: Path, tmp_path: Path, option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = usage_error(["quantize", option, value, str(mlp), str(tmp_path / "q.onnx")], capsys)
    assert f"argument {option}: '{value}' must be" in err
    assert not (tmp_path / "q.onnx").exists()


def test_quantize_names_a_sample_too_large_for_memory(
    mlp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One zero too many in --sample ended in numpy's _ArrayMemoryError traceback ("Unable to allocate 2.91 TiB").
    target = tmp_path / "q.onnx"
    assert main(["quantize", "--seconds", "0.01", "--sample", "100000000000", str(mlp), str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --sample 100000000000: ") and "give fewer rows" in err and err.count("\n") == 1
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp"]  # no temporary file left


def test_quantize_refuses_infinite_seconds(mlp: Path, tmp_path: Path) -> None:
    result = run_cli("quantize", "--seconds", "inf", str(mlp), str(tmp_path / "q.onnx"))  # it never returned
    assert result.returncode == 2
    assert "argument --seconds: 'inf' must be a finite number > 0" in result.stderr
    assert "Traceback" not in result.stderr


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], initializers: list[Any]) -> Any:
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_quantize_a_float16_model_says_it_needs_float32_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A half-precision transformer export (embedding table in float16): onnxruntime's dynamic quantization
    # writes a model that does not load, and the error ("Type 'tensor(float16)' of input parameter ... of
    # operator (DequantizeLinear) ... is invalid") did not say that the float32 export is what to quantize.
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.random.default_rng(0).standard_normal((20, 8)).astype(np.float16), "table")
    model = _model(
        [helper.make_node("Gather", ["table", "input_ids"], ["hidden"])],
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT16, ["batch", "sequence", 8])],
        [table],
    )
    source = save_model(model, tmp_path, "embed", 1)
    assert main(["quantize", "--seconds", "0.01", str(source), str(tmp_path / "q.onnx")]) == 1
    err = capsys.readouterr().err
    assert "this model's are float16 (a half-precision export): quantize its float32 export" in err
    assert not (tmp_path / "q.onnx").exists()


def test_quantize_a_model_that_does_not_run_on_random_inputs_fails_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    # x[batch, seq] reshaped to rows of 5 values: no sample of 8 rows runs whatever the length of seq tried
    # (1, 2, 16, 64: none a multiple of 5)
    weights = numpy_helper.from_array(np.ones((5, 4), np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 5], np.int64), "shape")
    model = _model(
        [helper.make_node("Reshape", ["x", "shape"], ["rows"]), helper.make_node("MatMul", ["rows", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [weights, shape],
    )
    source = save_model(model, tmp_path, "reshape", 1)
    target = tmp_path / "q.onnx"
    assert main(["quantize", "--seconds", "0.01", "--sample", "8", str(source), str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot compare ") and "does not run on the synthesized inputs" in err
    assert "x [8, 1]" in err and err.count("\n") == 1  # the shapes it was given, no traceback
    assert "as long as the first of 1, 2, 16, 64 that runs, else 1" in err
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reshape"]  # no temporary file left


def test_quantize_a_model_with_a_scalar_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from onnx import TensorProto, helper

    model = _model(
        [helper.make_node("Mul", ["x", "x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        [],
    )
    source = save_model(model, tmp_path, "square", 1)
    assert main(["quantize", "--seconds", "0.01", "--sample", "4", str(source), str(tmp_path / "q.onnx")]) == 0
    assert "speed, batch 1: " in capsys.readouterr().out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (jq and every strict reader refuse it)")


def test_quantize_of_a_model_that_answers_nan_reports_valid_json_and_a_real_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """log(x @ w) is NaN wherever x @ w < 0, in the original as in the quantized model: --json printed
    ``"max_abs_diff": NaN`` (not JSON: jq refused the report) and the text said "max abs diff nan", whatever the
    quantization did to the answers that are numbers."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32), "w")
    model = _model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Log", ["h"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [weights],
    )
    source = save_model(model, tmp_path, "log", 1)
    arguments = ["quantize", "--seconds", "0.01", "--sample", "64", "--allow-not-finite", str(source)]
    arguments.append(str(tmp_path / "q.onnx"))  # (NaN in one model only near log's 0 would be refused)
    assert main(["quantize", "--json", *arguments[1:]]) == 0
    report = json.loads(capsys.readouterr().out, parse_constant=_refuse_constant)
    y = report["accuracy"]["y"]
    assert 0 < y["max_abs_diff"] < 1  # over the answers that are numbers in both models
    assert isinstance(y["not_finite_in_one_only"], int)
    assert main(arguments) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("accuracy on"))
    assert "nan" not in line, line


def _nan_when_quantized(tmp_path: Path) -> Path:
    """sqrt(x² @ w - sum(x² * w) + 0.001): a number for every input in float32 (the two sums are one), NaN for
    most rows once the MatMul's small weights are quantized to 0 (the quantized sum falls short)."""
    from onnx import TensorProto, helper, numpy_helper

    weights = np.array([[1.0]] + [[0.003]] * 7, np.float32)
    model = _model(
        [
            helper.make_node("Mul", ["x", "x"], ["squares"]),
            helper.make_node("MatMul", ["squares", "w"], ["quantized_sum"]),
            helper.make_node("Mul", ["squares", "w_row"], ["products"]),
            helper.make_node("ReduceSum", ["products", "axes"], ["float_sum"], keepdims=1),
            helper.make_node("Sub", ["quantized_sum", "float_sum"], ["difference"]),
            helper.make_node("Add", ["difference", "margin"], ["above_zero"]),
            helper.make_node("Sqrt", ["above_zero"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(weights[:, 0], "w_row"),
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
            numpy_helper.from_array(np.array(1e-3, np.float32), "margin"),
        ],
    )
    return save_model(model, tmp_path, "sqrt", 1)


def test_quantize_refuses_a_model_that_answers_nan_where_the_original_answers_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report counted the NaN answers ("213 value(s) NaN or infinite in one model only") and renamed the
    quantized model into place with exit status 0: a deploy script that checks the status shipped a model that
    answers NaN for most rows."""
    source, target = _nan_when_quantized(tmp_path), tmp_path / "q.onnx"
    arguments = ["quantize", "--seconds", "0.01", str(source), str(target)]
    assert main(arguments) == 1
    captured = capsys.readouterr()
    assert "NaN or infinite in one model only" in captured.out  # the report is still shown
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "NaN or infinite" in captured.err and f"{target} was not written" in captured.err, captured.err
    assert "--allow-not-finite" in captured.err, captured.err
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sqrt"]  # no temporary file left

    assert main(["quantize", "--json", *arguments[1:]]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"]["y"]["not_finite_in_one_only"] > 0
    assert report["written"] is False and len(report["refused"]) == 1, report
    assert not target.exists()

    assert main(["quantize", "--allow-not-finite", *arguments[1:]]) == 0  # (the operator's call)
    assert target.exists()


def test_quantize_refuses_answers_further_off_than_max_abs_diff(
    mlp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "q.onnx"
    arguments = ["quantize", "--seconds", "0.01", "--sample", "16", str(mlp), str(target)]
    assert main(["quantize", "--json", *arguments[1:]]) == 0
    report = json.loads(capsys.readouterr().out)
    difference = report["accuracy"]["y"]["max_abs_diff"]
    assert report["written"] is True and report["refused"] == []
    target.unlink()
    assert main(["quantize", "--max-abs-diff", f"{difference / 2:g}", *arguments[1:]]) == 1
    err = capsys.readouterr().err
    assert f"max abs diff {difference:.4g} is more than --max-abs-diff {difference / 2:g}" in err, err
    assert not target.exists()
    assert main(["quantize", "--max-abs-diff", f"{difference * 2:g}", *arguments[1:]]) == 0
    assert target.exists()
    assert "--max-abs-diff: 'nan' must be a finite number > 0" in usage_error(
        ["quantize", "--max-abs-diff", "nan", *arguments[1:]], capsys
    )


def test_quantize_counts_rows_by_an_input_that_has_them_whatever_comes_first() -> None:
    """A scalar first input counted one row per 64-row run: the speed report was 64 times too low. (Checked on
    the count itself: two timings of 0.05 s, compared, moved past any bound on a loaded machine.)"""
    from inprocserve._quantize import _rows

    x, t = np.ones((64, 4), np.float32), np.array(2.0, np.float32)
    assert _rows({"t": t, "x": x}) == _rows({"x": x, "t": t}) == 64


# -- status --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "0", "-1", "nan"])
def test_status_refuses_timeouts_it_cannot_use(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["status", "--timeout", value, "http://127.0.0.1:9"], capsys)
    assert f"argument --timeout: '{value}' must be a finite number > 0" in err


@pytest.fixture
def status_endpoint() -> Iterator[dict[str, Any]]:
    """An HTTP endpoint answering ``served["document"]`` as JSON; ``served["url"]`` is its address."""
    served: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(served["document"]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    served["url"] = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize(
    ("model", "where"),
    [
        ({"ready": True, "versions": {"1": {}}, "shadow": {"2": None}}, "models.fraud.shadow.2 is null"),
        ({"ready": True, "rollout": ["x"]}, "models.fraud.rollout is an array"),
        ({"ready": True, "versions": ["1"]}, "models.fraud.versions is an array"),
        ({"ready": True, "versions": {"1": {"drift": [1]}}}, "models.fraud.versions.1.drift is an array"),
        ({"ready": True, "rollout": {"variants": {"stable": 3}}}, "models.fraud.rollout.variants.stable is a number"),
        ({"ready": True, "shadow": {"2": {"by_primary": [1]}}}, "models.fraud.shadow.2.by_primary is an array"),
    ],
)
def test_status_refuses_a_malformed_document(
    status_endpoint: dict[str, Any], model: dict[str, Any], where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status_endpoint["document"] = {"closed": False, "models": {"fraud": model}}
    assert main(["status", status_endpoint["url"]]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: {status_endpoint['url']}/-/inprocserve/models answered a malformed")
    assert f"{where}, expected an object" in captured.err
    assert captured.err.count("\n") == 1
    # --json prints the document as it came, for whoever runs the app to see
    assert main(["status", "--json", status_endpoint["url"]]) == 0
    assert json.loads(capsys.readouterr().out) == status_endpoint["document"]


def test_status_summarizes_a_well_formed_document(
    status_endpoint: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    status_endpoint["document"] = {
        "models": {
            "fraud": {
                "ready": True,
                "default_version": 2,
                "versions": {"2": {"state": "ready", "serving": True, "drift": None}},
                "rollout": {"strategy": "canary", "variants": {"stable": {"served": 5}}},
                "shadow": {"3": {"runs": 4, "errors": 0, "label_agreement": 0.75}},
            }
        }
    }
    assert main(["status", status_endpoint["url"]]) == 0
    out = capsys.readouterr().out
    assert "  rollout canary: served stable 5" in out
    assert "  shadow v3: 4 runs, 0 errors, label agreement 75.0%" in out
    # during a canary the copies compare with the stable or the canary: the split is printed
    shadow = status_endpoint["document"]["models"]["fraud"]["shadow"]["3"]
    shadow["by_primary"] = {"2": {"label_agreement": 1.0}, "4": {"label_agreement": 0.5}}
    assert main(["status", status_endpoint["url"]]) == 0
    assert "label agreement 75.0% (against v2 100.0%, v4 50.0%)" in capsys.readouterr().out
    # a shadow whose answers could never be compared (text labels against integers: a classifier retrained
    # with a LabelEncoder) read "4 runs, 0 errors", as if it agreed
    status_endpoint["document"]["models"]["fraud"]["shadow"]["3"] = {"runs": 4, "errors": 0, "mismatched": 4}
    assert main(["status", status_endpoint["url"]]) == 0
    assert "  shadow v3: 4 runs, 0 errors, 4 not comparable\n" in capsys.readouterr().out


def test_status_prints_control_characters_from_the_document_as_escapes(
    status_endpoint: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # Names and errors come from afar (a remote version's error quotes its server): printed as they came, an
    # escape sequence retitled or cleared the terminal and a newline forged a line of the summary.
    status_endpoint["document"] = {
        "models": {
            "fraud\x1b]0;owned\x07": {
                "ready": False,
                "config_error": "bad\nrisk: ready\x1b[2J",
                "versions": {"1": {"state": "failed", "error": "remote said \x1b[31mno\r"}},
            }
        }
    }
    assert main(["status", status_endpoint["url"]]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\nrisk: ready" not in out
    assert "fraud\\x1b]0;owned\\x07: NOT READY" in out
    assert "  config error: bad\\nrisk: ready\\x1b[2J" in out
    assert "  v1: failed: remote said \\x1b[31mno\\r" in out


def test_status_says_why_a_ready_version_cannot_take_work_and_which_new_files_failed(
    status_endpoint: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # A model NOT READY because its remote server is down listed its version as "ready, serving" and no
    # reason; new files that failed to load beside a serving version did not show at all.
    down = "the remote server http://models:8000/v2/models/fraud/versions/3 is failing (2 calls in a row failed)"
    status_endpoint["document"] = {
        "models": {
            "fraud": {
                "ready": False,
                "default_version": 3,
                "versions": {
                    "2": {"state": "ready", "serving": True, "health": None, "reload_error": "cannot load <path>"},
                    "3": {"state": "ready", "serving": True, "health": down, "reload_error": None},
                },
            }
        }
    }
    assert main(["status", status_endpoint["url"]]) == 1
    out = capsys.readouterr().out
    assert f"0 in flight; CANNOT TAKE WORK: {down}\n" in out
    assert "; NEW FILES FAILED TO LOAD (the version loaded before serves): cannot load <path>\n" in out


# -- symbolic links: fleet commands and validate ---------------------------------------------------------


@pytest.fixture
def linked_repository(tmp_path: Path) -> Path:
    """docs/repository.md's deployment: ``models/fraud/3`` is a link to a release folder."""
    models = tmp_path / "models"
    save_model(build_scale_model(2.0), models, "fraud", 1)
    release = save_model(build_scale_model(3.0), tmp_path / "releases", "fraud", 3).parent
    (models / "fraud" / "3").symlink_to(release, target_is_directory=True)
    return models


def test_fleet_commands_see_linked_versions(linked_repository: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = str(linked_repository)
    assert main(["switch", repo, "fraud", "3"]) == 0
    assert ControlFile(linked_repository).read().models["fraud"].stable == 3
    assert main(["canary", repo, "fraud", "3", "10"]) == 0
    assert ControlFile(linked_repository).read().models["fraud"].canary_version == 3
    capsys.readouterr()
    # a fleet whose servers do not follow links: the CLI can check the same way
    assert main(["switch", "--no-follow-symlinks", repo, "fraud", "3"]) == 1
    err = capsys.readouterr().err
    assert "has no version 3 (versions: 1)" in err and "--no-follow-symlinks" in err
    assert ControlFile(linked_repository).read().models["fraud"].stable == 3  # nothing written


def test_validate_follows_links_only_when_asked(linked_repository: Path) -> None:
    refused = run_cli("validate", str(linked_repository))
    assert refused.returncode == 1
    assert "symbolic link" in refused.stdout
    followed = run_cli("validate", "--follow-symlinks", str(linked_repository))
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert "OK      fraud v3 (served)" in followed.stdout
    assert "1 model(s), 0 problem(s)" in followed.stdout


def test_inspect_and_validate_print_names_from_a_model_file_with_their_control_characters_as_escapes(
    tmp_path: Path,
) -> None:
    # A model file's names are whatever its author wrote: printed as they came, an input named with a terminal's
    # escapes retitled and cleared the terminal, and a newline in it forged a line of validate's report.
    from onnx import TensorProto, helper, save

    name = "x\x1b]0;owned\x07\x1b[2J\nOK      fraud v9 (served): all good"
    model = _model(
        [helper.make_node("Identity", [name], ["y"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [],
    )
    (tmp_path / "models" / "evil" / "1").mkdir(parents=True)
    save(model, tmp_path / "models" / "evil" / "1" / "model.onnx")
    escaped = "x\\x1b]0;owned\\x07\\x1b[2J\\nOK      fraud v9 (served): all good"
    inspected = run_cli("inspect", str(tmp_path / "models" / "evil" / "1"))
    assert inspected.returncode == 0, inspected.stderr
    assert "\x1b" not in inspected.stdout and "\x07" not in inspected.stdout
    assert f"\n  {escaped}: tensor(float) [batch, 2]\n" in inspected.stdout
    validated = run_cli("validate", str(tmp_path / "models"))
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "\x1b" not in validated.stdout and "\nOK      fraud v9" not in validated.stdout
    assert f"OK      evil v1 (served): {escaped}: tensor(float) [batch, 2]\n" in validated.stdout
    # --json is for programs: the name as it is (json.dumps escapes it)
    assert "\x1b" not in run_cli("inspect", "--json", str(tmp_path / "models" / "evil" / "1")).stdout
    reported = json.loads(run_cli("inspect", "--json", str(tmp_path / "models" / "evil" / "1")).stdout)
    assert reported["inputs"][0]["name"] == name


# -- exit statuses: 2 when it could not run ------------------------------------------------------------


def test_inspect_a_missing_model_could_not_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "nope" / "model.onnx")]) == 2
    assert "no such model file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["inspect", str(tmp_path / "empty")]) == 2  # a folder without a model.onnx


def test_fleet_commands_on_a_missing_repository_could_not_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["switch", str(tmp_path / "nowhere"), "fraud", "3"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["reload", str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize("command", ["switch", "canary"])
def test_switch_and_canary_refuse_a_version_that_cannot_load(repository: Path, command: str) -> None:
    """`switch models/ fraud 2` checked the folder's name only: a model.onnx cut short by a failed copy was
    written into the control file with exit status 0, and every server of the fleet then failed to load the
    version it was told to serve (each logged "applied only in part" and kept retrying). It is loaded first,
    as `validate` loads it; a folder with no model file is named with what it lacks."""
    save_model(build_scale_model(2.0), repository, "fraud", 1)
    broken = repository / "fraud" / "2" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"\x08\x07garbage, not a model")  # (a copy cut short)
    (repository / "fraud" / "3").mkdir()  # (a copy not started)
    percent = ["10"] if command == "canary" else []
    refused = run_cli(command, str(repository), "fraud", "2", *percent)
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1, refused.stderr
    assert f"cannot load {broken}" in refused.stderr and "nothing was written" in refused.stderr, refused.stderr
    assert "--no-load-check" in refused.stderr, refused.stderr
    missing = run_cli(command, str(repository), "fraud", "3", *percent)
    assert missing.returncode == 1, missing.stderr
    assert f"{repository / 'fraud' / '3'}: missing model.onnx" in missing.stderr, missing.stderr
    assert not ControlFile(repository).path.exists()  # nothing written
    # the operator's call (a host that cannot load it, e.g. without the fleet's GPU): written unchecked
    forced = run_cli(command, "--no-load-check", str(repository), "fraud", "2", *percent)
    assert forced.returncode == 0, forced.stderr
    state = ControlFile(repository).read().models["fraud"]
    assert (state.canary_version if command == "canary" else state.stable) == 2


@pytest.mark.parametrize("command", [["kill"], ["resume"], ["rollback"], ["canary", "none"], ["switch", "1"]])
def test_a_model_name_mistyped_is_refused_naming_the_models_there(
    repository: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # `kill models/ frud` during an incident said only "model 'frud' is not in the repository models/": not
    # which models are there, nor that nothing was written (the other refusals say both)
    save_model(build_scale_model(1.0), repository, "fraud", 1)
    save_model(build_scale_model(1.0), repository, "churn", 1)
    assert main([command[0], str(repository), "frud", *command[1:]]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: model 'frud' is not in the repository {repository} (models: churn, fraud; did you mean "
        "'fraud'?); nothing was written\n"
    ), err
    assert not ControlFile(repository).path.exists()


def test_rollback_refuses_a_version_to_go_back_to_that_cannot_load(repository: Path) -> None:
    """`rollback models/ fraud` wrote the previous stable version into the control file with exit status 0
    without loading it: its model.onnx, cut short since (a failed copy over it), then failed to load on every
    server of the fleet. It is loaded first, as `switch` loads the version it names."""
    save_model(build_scale_model(1.0), repository, "fraud", 1)
    save_model(build_scale_model(2.0), repository, "fraud", 2)
    assert main(["switch", str(repository), "fraud", "1"]) == 0
    assert main(["switch", str(repository), "fraud", "2"]) == 0  # the fleet on 2; a rollback goes back to 1
    broken = repository / "fraud" / "1" / "model.onnx"
    broken.write_bytes(broken.read_bytes()[:20])  # (cut short)
    before = ControlFile(repository).path.read_bytes()
    refused = run_cli("rollback", str(repository), "fraud")
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1, refused.stderr
    assert f"cannot load {broken}" in refused.stderr and "nothing was written" in refused.stderr, refused.stderr
    assert "--no-load-check" in refused.stderr, refused.stderr
    assert ControlFile(repository).path.read_bytes() == before  # nothing written
    # the operator's call (a host that cannot load it): written unchecked
    forced = run_cli("rollback", "--no-load-check", str(repository), "fraud")
    assert forced.returncode == 0, forced.stderr
    assert ControlFile(repository).read().models["fraud"].stable == 1


def test_rollback_loads_what_another_writers_switch_leaves_to_go_back_to(
    repository: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The version to go back to is loaded before the control file's lock is taken, and read again inside it:
    when another operator's switch moved it meanwhile, the new one is loaded first, never written unloaded."""
    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "fraud", version)
    assert main(["switch", str(repository), "fraud", "2"]) == 0
    assert main(["switch", str(repository), "fraud", "3"]) == 0  # previous stable: 2, which loads
    (repository / "fraud" / "1" / "model.onnx").write_bytes(b"not onnx")
    meanwhile = [[1, 3]]  # another writer, after the rollback loaded 2: previous stable 1, which cannot load

    class SwitchedMeanwhile(ControlFile):
        def update(self, change: Any, *, actor: str | None = None) -> Any:
            for version in meanwhile.pop(0) if meanwhile else []:
                other = ControlFile(self.folder)
                other.set_model("fraud", lambda state, version=version: switched(state, version), actor="other")
            return super().update(change, actor=actor)

    monkeypatch.setattr("inprocserve._cli_control.ControlFile", SwitchedMeanwhile)
    capsys.readouterr()
    assert main(["rollback", str(repository), "fraud"]) == 1
    err = capsys.readouterr().err
    assert "the version to roll back to does not load: model 'fraud' version 1: cannot load" in err, err
    assert "nothing was written" in err, err
    state = ControlFile(repository).read().models["fraud"]
    assert (state.stable, state.previous_stable) == (3, 1)  # the other writer's, not rolled back to 1


def test_switch_refuses_a_version_whose_signature_breaks_the_callers_unless_forced(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`server.switch("fraud", 1)` and the admin endpoint refuse a version whose inputs or outputs would break
    the callers of the version serving now (PromotionRefusedError, 409) unless forced; `python -m inprocserve
    switch models/ fraud 1` wrote it, exit 0, and every caller of the fleet then sent inputs it does not take."""
    save_model(build_add_model(), repository, "fraud", 1)  # inputs a, b, n
    save_model(build_scale_model(2.0), repository, "fraud", 2)  # input x: serves now (the latest)
    capsys.readouterr()
    assert main(["switch", str(repository), "fraud", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model 'fraud' version 1 is not compatible with version 2, which serves now: "), err
    assert "--force" in err and "nothing was written" in err and err.count("\n") == 1, err
    assert not ControlFile(repository).path.exists()
    assert main(["switch", "--force", str(repository), "fraud", "1"]) == 0  # callers are ready
    assert ControlFile(repository).read().models["fraud"].stable == 1


def test_a_switch_away_from_a_version_that_does_not_load_says_it_was_not_compared(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Switching away from a broken stable version is the fix, so it is not refused; but the switch was
    written without its compatibility check, and nothing said so."""
    save_model(build_scale_model(1.0), repository, "fraud", 1)
    save_model(build_scale_model(2.0), repository, "fraud", 2)
    assert main(["switch", str(repository), "fraud", "2"]) == 0
    (repository / "fraud" / "2" / "model.onnx").write_bytes(b"\x08\x07garbage, not a model")
    capsys.readouterr()
    assert main(["switch", str(repository), "fraud", "1"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(
        "warning: model 'fraud' version 2, which serves now, does not load here, so version 1 was not compared"
    ), err
    assert ControlFile(repository).read().models["fraud"].stable == 1


def test_a_canary_that_cannot_load_can_be_turned_down_to_zero(repository: Path) -> None:
    """A canary found broken (its model.onnx overwritten by a bad copy: the fleet's logs fill with load
    failures) is turned down with `canary models/ fraud 2 0`, which sends no one to it and has no server load
    it: the load check refused exactly that (exit 1), so the way out needed --no-load-check."""
    save_model(build_scale_model(1.0), repository, "fraud", 1)
    save_model(build_scale_model(2.0), repository, "fraud", 2)
    assert main(["canary", str(repository), "fraud", "2", "10"]) == 0
    (repository / "fraud" / "2" / "model.onnx").write_bytes(b"\x08\x07garbage, not a model")
    down = run_cli("canary", str(repository), "fraud", "2", "0")
    assert down.returncode == 0, down.stderr
    state = ControlFile(repository).read().models["fraud"]
    assert (state.canary_version, state.canary_percent, state.canary_active) == (2, 0.0, False)
    # sending users to it is still refused
    assert run_cli("canary", str(repository), "fraud", "2", "5").returncode == 1
    assert ControlFile(repository).read().models["fraud"].canary_percent == 0
    # a percentage out of range is named as the problem, not the load it no longer waits for
    out_of_range = run_cli("canary", str(repository), "fraud", "2", "150")
    assert out_of_range.returncode == 1 and "percent must lie in 0..100" in out_of_range.stderr, out_of_range.stderr


_SIGNAL_DROPPED_AS_THE_MODEL_LOADS = signal_dropped_as_it_loads("inprocserve._cli_models", "_load")


_STOPPED_WHILE_ONNXRUNTIME_LOADS = STOPPED_WHILE_ONNXRUNTIME_LOADS


@pytest.mark.parametrize(
    ("script", "stop"),
    [
        (_SIGNAL_DROPPED_AS_THE_MODEL_LOADS, signal.SIGTERM),
        (_SIGNAL_DROPPED_AS_THE_MODEL_LOADS, signal.SIGINT),
        (_STOPPED_WHILE_ONNXRUNTIME_LOADS, signal.SIGTERM),
    ],
    ids=["dropped-SIGTERM", "dropped-SIGINT", "onnxruntime-init-SIGTERM"],
)
@pytest.mark.parametrize("command", ["switch", "canary", "rollback", "validate", "inspect"])
def test_a_stop_as_a_model_loads_stops_the_command(
    repository: Path, command: str, script: str, stop: signal.Signals
) -> None:
    """`timeout 60 python -m inprocserve switch models/ fraud 2`, its SIGTERM handled while the version loaded
    where Python drops a handler's exception: switch went on and wrote the control file, exit 0 (the fleet was
    sent to the version after all); validate and inspect printed their report as if never stopped. Sent as
    onnxruntime's module initializes, validate reported a version that is fine as one that fails (exit 1)."""
    save_model(build_scale_model(1.0), repository, "fraud", 1)
    save_model(build_scale_model(2.0), repository, "fraud", 2)
    ControlFile(repository).set_model("fraud", lambda state: switched(switched(state, 1), 2))
    before = ControlFile(repository).path.read_bytes()
    argv = {
        "switch": ["switch", str(repository), "fraud", "1"],
        "canary": ["canary", str(repository), "fraud", "1", "10"],
        "rollback": ["rollback", str(repository), "fraud"],
        "validate": ["validate", str(repository)],
        "inspect": ["inspect", str(repository / "fraud" / "2")],
    }[command]
    result = subprocess.run(
        [sys.executable, "-c", script, str(int(stop)), *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        preexec_fn=interruptible,
    )
    assert result.returncode == 128 + stop, result.stderr
    assert result.stdout == "", result.stdout
    assert result.stderr.startswith(f"error: stopped by {stop.name} before "), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert ControlFile(repository).path.read_bytes() == before  # nothing written


@pytest.mark.parametrize("version", ["four", "v4", "None"])
def test_a_canary_version_that_is_not_one_is_named_with_what_to_give(
    repository: Path, version: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse named the private function that reads it: "argument version: invalid _canary_version value"
    err = usage_error(["canary", str(repository), "fraud", version, "10"], capsys)
    assert f"argument version: {version!r} is not a version: give a whole number >= 1, or 'none'" in err, err
    assert "_canary_version" not in err
    assert not ControlFile(repository).path.exists()


@pytest.mark.parametrize("percent", ["10%", "10 %", "10"])
def test_a_canary_percent_may_end_with_a_percent_sign(
    repository: Path, percent: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`canary models/ fraud 4 10%` said argparse's "argument percent: invalid float value: '10%'"."""
    save_model(build_scale_model(4.0), repository, "fraud", 4)
    assert main(["canary", str(repository), "fraud", "4", percent]) == 0, capsys.readouterr().err
    model = ControlFile(repository).read().models["fraud"]
    assert (model.canary_version, model.canary_percent) == (4, 10.0)


@pytest.mark.parametrize("percent", ["ten", "10%%", "%"])
def test_a_canary_percent_that_is_not_a_number_says_what_to_give(
    repository: Path, percent: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = usage_error(["canary", str(repository), "fraud", "4", percent], capsys)
    assert f"argument percent: {percent!r} is not a percentage: give a number from 0 to 100, such as 10" in err, err
    assert "invalid float value" not in err
    assert not ControlFile(repository).path.exists()


@pytest.mark.parametrize("percent", ["150", "150%", "-5"])
def test_a_canary_percent_out_of_range_names_the_range(
    repository: Path, percent: str, capsys: pytest.CaptureFixture[str]
) -> None:
    save_model(build_scale_model(4.0), repository, "fraud", 4)
    assert main(["canary", str(repository), "fraud", "4", percent]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "0..100" in err and err.count("\n") == 1, err
    assert not ControlFile(repository).path.exists()


# -- Ctrl-C ------------------------------------------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[tuple[str, threading.Event]]:
    """An address that takes connections and never answers (a hung app or remote server), and an event set
    once a client has connected."""
    listener = socket.create_server(("127.0.0.1", 0))
    connected = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # (closed at teardown)
            while True:
                held.append(listener.accept()[0])
                connected.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", connected
    listener.close()
    for connection in held:
        connection.close()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("command", ["status", "inspect", "validate"])
def test_stopping_a_read_only_command_is_one_line(
    tmp_path: Path, command: str, stop: signal.Signals, silent_server: tuple[str, threading.Event]
) -> None:
    """Ctrl-C in `status` waiting on a hung app, or in `inspect` and `validate` waiting on a remote model's
    server, ended in a KeyboardInterrupt traceback, as the fleet commands and score no longer do; SIGTERM
    (`timeout 30 python -m inprocserve status ...` in a cron line, a cancelled CI job) ended them with nothing
    said, killed by the signal, where score, quantize and the fleet commands say in one line what stopped them."""
    url, connected = silent_server
    version = tmp_path / "models" / "fraud" / "1"
    version.mkdir(parents=True)
    (version / "remote.toml").write_text(f'url = "{url}"\nmodel = "fraud"\ntimeout_s = 60\nretries = 0\n')
    argv = {
        "status": ["status", "--timeout", "60", url],
        "inspect": ["inspect", str(version / "remote.toml")],
        "validate": ["validate", str(tmp_path / "models")],
    }[command]
    with subprocess.Popen(
        [sys.executable, "-m", "inprocserve", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    ) as process:
        try:
            assert connected.wait(60) or process.poll() is not None
            process.send_signal(stop)
            out, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:  # (a failed test leaves no command running into the next tests)
                process.kill()
    assert out == ""
    assert process.returncode == 128 + stop, err
    assert err == f"error: stopped by {stop.name} before {command} finished\n", err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def _terminate_ignored() -> None:
    """In the child: SIGTERM ignored, as a parent that ignores it leaves it (and Ctrl-C as a terminal gives it)."""
    interruptible()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def test_a_read_only_command_started_with_sigterm_ignored_goes_on_ignoring_it(
    silent_server: tuple[str, threading.Event],
) -> None:
    """A SIGTERM its parent chose to ignore stopped `status` once every command ran under the stop handlers
    (SIGHUP ignored by nohup was already left as it was)."""
    url, connected = silent_server
    with subprocess.Popen(
        [sys.executable, "-m", "inprocserve", "status", "--timeout", "60", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_terminate_ignored,
    ) as process:
        try:
            assert connected.wait(60)
            process.send_signal(signal.SIGTERM)
            with pytest.raises(subprocess.TimeoutExpired):
                process.wait(timeout=1.0)  # still waiting on the server
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 130, err
    assert err == "error: stopped by SIGINT before status finished\n", err


# -- a reader that goes away -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["validate --json", "switch", "status --json"])
def test_a_reader_gone_from_the_pipe_is_no_traceback(
    tmp_path: Path, command: str, status_endpoint: dict[str, Any]
) -> None:
    # `python -m inprocserve status --json URL | head`: head exits once it has its lines. The command printed
    # a BrokenPipeError traceback and exited 1 ("found a problem"), a switch after it had written the change.
    save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)
    status_endpoint["document"] = {"models": {"scale": {"ready": True}}}
    arguments = {
        "validate --json": ["validate", "--json", str(tmp_path / "models")],
        "switch": ["switch", str(tmp_path / "models"), "scale", "1"],
        "status --json": ["status", "--json", status_endpoint["url"]],
    }[command]
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        done = subprocess.run(
            [sys.executable, "-m", "inprocserve", *arguments], stdout=write, stderr=subprocess.PIPE, timeout=60
        )
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr  # as a program stopped by SIGPIPE
    assert done.stderr == b""
    if command == "switch":
        assert ControlFile(tmp_path / "models").read().models["scale"].stable == 1  # written all the same


def test_status_of_a_server_with_no_model_is_not_healthy(
    status_endpoint: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # A server that found no model (an empty or wrong repository) answers every request "unknown model" and
    # its /ready 503; `status` printed "no models" and exited 0, so a deploy check passed it.
    status_endpoint["document"] = {"closed": False, "models": {}, "control": {"error": None, "revision": 0}}
    assert main(["status", status_endpoint["url"]]) == 1
    assert "no models" in capsys.readouterr().out


def test_status_of_a_fleet_not_held_is_not_healthy(
    status_endpoint: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # The gate held an incompatible version in this worker but could not name the version it serves for the
    # fleet: this worker answers, a worker that starts may serve the other version. `status` printed FLEET NOT
    # HELD and exited 0, so a deploy check passed a fleet about to split.
    error = "version 1 could not be named for the fleet: the control file's lock is held by another process"
    status_endpoint["document"] = {
        "closed": False,
        "models": {"m": {"ready": True, "fleet_hold_error": error}},
        "control": {"error": None, "revision": 3},
    }
    assert main(["status", status_endpoint["url"]]) == 1
    assert f"  FLEET NOT HELD: {error}" in capsys.readouterr().out.splitlines()
    status_endpoint["document"]["models"]["m"]["fleet_hold_error"] = None
    assert main(["status", status_endpoint["url"]]) == 0


@pytest.fixture
def recording_endpoint() -> Iterator[dict[str, Any]]:
    """A second host's status endpoint, recording the ``Authorization`` header of each request it gets."""
    seen: dict[str, Any] = {"authorization": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen["authorization"].append(self.headers.get("Authorization"))
            body = json.dumps({"closed": False, "models": {"fraud": {"ready": True}}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.2", 0), Handler)  # another host: another loopback address
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    seen["url"] = f"http://127.0.0.2:{httpd.server_address[1]}/-/inprocserve/models"
    try:
        yield seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def redirecting_endpoint() -> Iterator[dict[str, Any]]:
    """An app whose status endpoint answers ``302 Location: redirect["to"]`` (a path: its own origin)."""
    redirect: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/moved/models":
                body = json.dumps({"closed": False, "models": {"fraud": {"ready": True}}}).encode()
                redirect["authorization"] = self.headers.get("Authorization")
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(302)
            self.send_header("Location", redirect["to"])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    redirect["url"] = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield redirect
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_status_never_sends_the_admin_token_to_where_a_redirect_leads(
    redirecting_endpoint: dict[str, Any], recording_endpoint: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # urllib copies every header onto a redirect: an endpoint (or a proxy on the way) answering 302 to another
    # host was sent `Authorization: Bearer <admin token>`, in clear text even when the URL given was https.
    redirecting_endpoint["to"] = recording_endpoint["url"]
    assert main(["status", "--token", "s3cret-admin-token", redirecting_endpoint["url"]]) == 2
    err = capsys.readouterr().err
    assert f"redirects to '{recording_endpoint['url']}', another scheme, host or port" in err
    assert recording_endpoint["authorization"] == []
    # without a token there is nothing to leak: the redirect is followed
    assert main(["status", redirecting_endpoint["url"]]) == 0
    assert recording_endpoint["authorization"] == [None]
    # and within the app's own origin the token goes along
    redirecting_endpoint["to"] = "/moved/models"
    assert main(["status", "--token", "s3cret-admin-token", redirecting_endpoint["url"]]) == 0
    assert redirecting_endpoint["authorization"] == "Bearer s3cret-admin-token"


def test_status_reads_the_admin_token_from_a_file_or_stdin_rather_than_the_process_list(
    redirecting_endpoint: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--token T` puts the token in the process's command line, which every local user can read (ps,
    # /proc/<pid>/cmdline) while the command waits for the endpoint: a token that switches and kills models.
    redirecting_endpoint["to"] = "/moved/models"
    secret = tmp_path / "admin_token"
    secret.write_text("s3cret-admin-token\n")  # (as a secrets mount or `echo` writes it)
    assert main(["status", "--token-file", str(secret), redirecting_endpoint["url"]]) == 0
    assert redirecting_endpoint["authorization"] == "Bearer s3cret-admin-token"
    redirecting_endpoint["authorization"] = None
    done = subprocess.run(
        [sys.executable, "-m", "inprocserve", "status", "--token-file", "-", redirecting_endpoint["url"]],
        input="s3cret-from-stdin\n",
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert redirecting_endpoint["authorization"] == "Bearer s3cret-from-stdin"
    capsys.readouterr()
    secret.write_text("\n")
    assert main(["status", "--token-file", str(secret), redirecting_endpoint["url"]]) == 2
    assert f"--token-file {secret}: holds no token" in capsys.readouterr().err
    assert main(["status", "--token-file", str(tmp_path / "missing"), redirecting_endpoint["url"]]) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_status_gives_up_at_its_timeout_on_an_endpoint_that_trickles_its_answer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # urllib's timeout bounds each read, not the call: an answer sent a byte every 0.2 s held `status --timeout 1`
    # (a deploy check) for as long as the endpoint liked.
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            body = b'{"closed": false, "models": {}}' + b" " * 20  # (10 s to send)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            for byte in body:
                if stop.wait(0.2):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        assert main(["status", "--timeout", "1", f"http://127.0.0.1:{listener.getsockname()[1]}"]) == 2
        assert time.monotonic() - started < 3
        assert "gave no whole answer within 1 s (--timeout)" in capsys.readouterr().err
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()


def test_status_never_prints_a_token_a_header_cannot_carry(
    redirecting_endpoint: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # http.client refuses a header value with a line break by an error that quotes it: a token file holding the
    # token and a comment line printed the token on stderr (exit 2), into a deploy log or a cron mail.
    secret = tmp_path / "admin_token"
    secret.write_text("s3cret-admin-token\n# rotated 2026-12-01\n")
    assert main(["status", "--token-file", str(secret), redirecting_endpoint["url"]]) == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err and "rotated" not in err
    assert "a line break or another character an HTTP header cannot carry (not shown)" in err
    assert redirecting_endpoint.get("authorization") is None  # nothing was sent
    assert main(["status", "--token", "s3cret\x00x", redirecting_endpoint["url"]]) == 2
    assert "s3cret" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "answer",
    [
        b"HELLO WORLD\r\n\r\n",  # not a status line
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",  # a header line over http.client's 64 KiB
        b"HTTP/1.1 200 OK\r\n" + b"X: a\r\n" * 200 + b"\r\n{}",  # more headers than http.client takes
    ],
    ids=["bad status line", "long header", "many headers"],
)
def test_status_of_an_endpoint_that_does_not_answer_http_is_exit_status_2(
    answer: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    # http.client's own errors are not OSErrors: they were a traceback and exit status 1, which --help keeps for a
    # server that is not healthy (a deploy check waits on it), not 2 (the endpoint cannot be read).
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_once() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(answer)

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    try:
        assert main(["status", "--timeout", "5", f"http://127.0.0.1:{listener.getsockname()[1]}"]) == 2
        assert "did not answer HTTP" in capsys.readouterr().err
    finally:
        thread.join(timeout=10)
        listener.close()


def test_status_prints_an_endpoints_reason_phrase_with_its_control_characters_as_escapes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The reason phrase of an error answer is the endpoint's own text: printed as it came, a hostile one
    # retitled and cleared the terminal, and a carriage return overwrote the line with its own words.
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_once() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(
                b"HTTP/1.1 401 \x1b]0;owned\x07\x1b[2J\rfraud: ready\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    try:
        assert main(["status", "--timeout", "5", f"http://127.0.0.1:{listener.getsockname()[1]}"]) == 2
        err = capsys.readouterr().err
        assert "\x1b" not in err and "\x07" not in err and "\r" not in err
        assert "answered HTTP 401 \\x1b]0;owned\\x07\\x1b[2J\\rfraud: ready: pass the admin token" in err
        assert err.count("\n") == 1
    finally:
        thread.join(timeout=10)
        listener.close()


def test_quantize_of_a_model_that_answers_the_same_infinity_in_both_prints_no_numpy_warning(tmp_path: Path) -> None:
    """log(relu(x @ w)) is -inf wherever x @ w <= 0, in the original as in the quantized model: the same answer,
    which the report leaves out of max abs diff, but the command printed numpy's RuntimeWarning (a source path
    and line of inprocserve) above the report."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32), "w")
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Log", ["r"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [weights],
    )
    source = save_model(model, tmp_path, "log", 1)
    # (--allow-not-finite: at the edge of log's domain one value may flip to -inf in one model only)
    result = run_cli(
        "quantize",
        "--json",
        "--allow-not-finite",
        "--seconds",
        "0.01",
        "--sample",
        "64",
        str(source),
        str(tmp_path / "q.onnx"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    assert 0 <= json.loads(result.stdout)["accuracy"]["y"]["max_abs_diff"] < 1


def test_the_load_check_keeps_the_versions_own_pool_settings() -> None:
    """`validate` and the load check of `switch` and `canary` built the session with onnxruntime's defaults
    for all but the providers: a version that loads only with its config.toml's graph optimization, provider
    options or memory settings was refused, and one that fails only with them passed."""
    from inprocserve._cli_models import _quiet

    pool = PoolConfig(
        size=4,
        graph_optimization="basic",
        provider_options={"CPUExecutionProvider": {"arena_extend_strategy": "kSameAsRequested"}},
        memory_arena=False,
        memory_pattern=False,
        require_gpu=True,
        optimized_model_cache=True,
    )
    checked = _quiet(ModelConfig(pool=pool)).pool
    assert (checked.graph_optimization, checked.memory_arena, checked.memory_pattern) == ("basic", False, False)
    assert checked.provider_options == pool.provider_options
    assert (checked.size, checked.intra_op_threads, checked.require_gpu, checked.optimized_model_cache) == (
        1,
        1,
        False,
        False,
    )


def test_switch_compares_with_the_version_serving_when_it_writes_not_when_it_read(
    repository: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two operators at once: `switch models/ fraud 3` (compatible with 2, serving as it starts) while another
    operator's `switch --force models/ fraud 1` lands as it loads and compares. The serving version was read
    before the loads, outside the control file's lock, so 3 was written over 1 (exit 0) and every caller of
    version 1 then sent inputs version 3 does not take; it is compared again with what serves when it writes."""
    import inprocserve._cli_control as cli_control

    save_model(build_add_model(), repository, "fraud", 1)  # inputs a, b, n
    save_model(build_scale_model(2.0), repository, "fraud", 2)  # input x
    save_model(build_scale_model(3.0), repository, "fraud", 3)  # input x: compatible with 2, not with 1
    # (forced: a worker that saw 1 before 2 and 3 came keeps answering with 1, so a plain switch is refused)
    assert main(["switch", "--force", str(repository), "fraud", "2"]) == 0
    real = cli_control.incompatibilities
    landed: list[bool] = []

    def meanwhile(serving: Any, candidate: Any) -> list[str]:  # (the other operator's write, as this one compares)
        if not landed:
            landed.append(True)
            ControlFile(repository).set_model("fraud", lambda state: switched(state, 1))
        return real(serving, candidate)

    monkeypatch.setattr(cli_control, "incompatibilities", meanwhile)
    capsys.readouterr()
    assert main(["switch", str(repository), "fraud", "3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model 'fraud' version 3 is not compatible with version 1, which serves now: "), err
    assert ControlFile(repository).read().models["fraud"].stable == 1


@pytest.mark.parametrize(
    ("command", "cleared"),
    [
        (["resume"], lambda state: not state.kill),
        (["kill"], lambda state: state.kill),
        (["canary", "none"], lambda state: state.canary_version is None and state.canary_percent == 0),
    ],
)
def test_a_model_removed_from_the_repository_can_still_be_turned_down_from_the_command_line(
    repository: Path, command: list[str], cleared: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # The fleet ran fraud 1 with a canary on 2, killed; fraud's folder was then removed (retired), while its
    # servers kept serving it from memory: `resume`/`canary none` were refused with "model 'fraud' is not in
    # the repository", so the control file's entry could not be cleared from the command line.
    save_model(build_scale_model(1.0), repository, "fraud", 1)
    save_model(build_scale_model(2.0), repository, "fraud", 2)
    save_model(build_scale_model(1.0), repository, "churn", 1)
    assert main(["switch", str(repository), "fraud", "1"]) == 0
    assert main(["canary", str(repository), "fraud", "2", "10"]) == 0
    assert main(["kill", str(repository), "fraud"]) == 0
    shutil.rmtree(repository / "fraud")
    capsys.readouterr()
    assert main([command[0], str(repository), "fraud", *command[1:]]) == 0
    err = capsys.readouterr().err
    assert "model 'fraud' is not in the repository" in err and "control file" in err, err
    assert cleared(ControlFile(repository).read().models["fraud"])
    # setting a version to serve still refuses: no server could load it
    for refused in (["switch", "fraud", "1"], ["canary", "fraud", "2", "10"], ["rollback", "fraud"]):
        assert main([refused[0], str(repository), *refused[1:]]) == 1
        assert "model 'fraud' is not in the repository" in capsys.readouterr().err
    # a name the control file does not have is refused as before (a typo in an incident)
    assert main([command[0], str(repository), "frud", *command[1:]]) == 1
    err = capsys.readouterr().err
    assert "model 'frud'" in err and "note:" not in err, err


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (errno.EACCES, "a parent folder this user may not search?"),
        (errno.ESTALE, "the network share it is on was changed or remounted?"),
        (errno.EIO, "(Input/output error): nothing was written"),
    ],
    ids=["EACCES", "ESTALE", "EIO"],
)
def test_a_repository_that_cannot_be_looked_at_is_explained_by_its_error(
    repository: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], code: int, hint: str
) -> None:
    # A stale NFS handle (the share remounted under the shell) was blamed on a parent folder's permissions.
    save_model(build_scale_model(), repository, "scale")
    original = Path.is_dir

    def is_dir(path: Path) -> bool:
        if path == repository:
            raise OSError(code, os.strerror(code), str(path))
        return original(path)

    monkeypatch.setattr(Path, "is_dir", is_dir)
    assert main(["reload", str(repository)]) == 2
    err = capsys.readouterr().err
    assert f"cannot be looked at ({os.strerror(code)})" in err
    assert hint in err
    assert ("parent folder" in err) == (code == errno.EACCES)
