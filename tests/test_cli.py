"""``python -m inprocserve``: inspect, validate, quantize, status, --version and --help."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve.__main__ import main
from inprocserve._cli import COMMANDS
from inprocserve._extras import require
from inprocserve.testing import build_add_model, build_scale_model, save_model

from .ports import reserved_port
from .test_batch_independence import centered
from .toolkit_models import build_string_label_classifier

ROOT = Path(__file__).resolve().parent.parent


def test_inspect_prints_the_signature(tmp_path: Path, capsys: object) -> None:
    path = save_model(build_add_model(), tmp_path, "add", 1)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "a: tensor(float) [batch, 3]" in out
    assert "count: tensor(int64) [batch, 1]" in out
    assert "batchable: yes" in out


def test_inspect_json_and_version_folder(tmp_path: Path, capsys: object) -> None:
    path = save_model(build_scale_model(), tmp_path, "scale", 1)
    assert main(["inspect", "--json", str(path.parent)]) == 0
    data = json.loads(capsys.readouterr().out)  # type: ignore[attr-defined]
    assert data["inputs"] == [{"name": "x", "type": "tensor(float)", "shape": ["batch", 4]}]
    assert (data["batchable"], data["unbatchable_reason"]) == (True, None)


def test_inspect_json_says_what_the_load_found_of_the_rows(tmp_path: Path, capsys: object) -> None:
    path = save_model(centered(), tmp_path, "centered", 1)  # x - mean(x, axis=0): rows depend on each other
    assert main(["inspect", "--json", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)  # type: ignore[attr-defined]
    assert data["batchable"] is False
    assert "a row's answer depends on the other rows of its run" in data["unbatchable_reason"]


def test_inspect_a_broken_file_exits_non_zero(tmp_path: Path, capsys: object) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"nope")
    assert main(["inspect", str(bad)]) == 1
    assert "cannot load" in capsys.readouterr().err  # type: ignore[attr-defined]


def test_inspect_a_broken_version_names_its_version(repository: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `inspect models/fraud/7/model.onnx` of a copy cut short said "model 'fraud' version 1: cannot load
    # models/fraud/7/model.onnx", a version the operator never named (and one that may load fine)
    bad = repository / "fraud" / "7" / "model.onnx"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x08\x07garbage, not a model")
    assert main(["inspect", str(bad.parent)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: model 'fraud' version 7: cannot load {bad}: "), err


@pytest.mark.parametrize(
    "where",
    [
        # a file straight from a download, outside models/<name>/<version>/: it said "model 'team' version 1:
        # cannot load ...", the folder two levels up taken for a model's name
        "team/downloads/fraud-v3.onnx",
        # a numbered folder holding a file of another name is no version folder (a repository's holds
        # model.onnx), yet it said "model 'releases' version 3: cannot load ..."
        "releases/3/fraud-v3.onnx",
    ],
)
def test_inspect_a_broken_loose_file_names_the_file_not_a_folder_above_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    bad = tmp_path / where
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x08\x07garbage, not a model")
    assert main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: model 'fraud-v3' version 1: cannot load {bad}: "), err


def test_validate_a_good_repository(repository: Path, capsys: object) -> None:
    save_model(build_scale_model(), repository, "scale", 1)
    save_model(build_scale_model(), repository, "scale", 2)
    assert main(["validate", str(repository)]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "OK      scale v1 (not served by the version policy)" in out
    assert "OK      scale v2 (served)" in out
    assert "1 model(s), 0 problem(s)" in out


def test_validate_says_served_of_the_versions_a_server_serves(repository: Path, capsys: object) -> None:
    # The demo's layout: 1 stable, 2 a canary, 3 a shadow; the policy ("latest") alone selects 3. And a
    # model whose latest version is broken: a server serves the one before it.
    for version in (1, 2, 3, 4):
        save_model(build_scale_model(float(version)), repository, "fraud", version)
    (repository / "fraud" / "config.toml").write_text(
        '[rollout]\nstrategy = "canary"\nstable = 1\n[rollout.canary]\nversion = 2\npercent = 10\n'
        "[rollout.shadow]\nversions = [3]\n"
    )
    save_model(build_scale_model(1.0), repository, "scale", 1)
    (repository / "scale" / "2").mkdir()
    (repository / "scale" / "2" / "model.onnx").write_bytes(b"cut short")
    assert main(["validate", str(repository)]) == 1
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    for version in (1, 2, 3, 4):  # they read "not served" but the latest, 4
        assert f"OK      fraud v{version} (served)" in out, out
    assert "OK      scale v1 (served)" in out  # it read "not served", the broken 2 "served"
    with inprocserve.Server(repository, control_interval_s=None) as server:  # what a server serves indeed
        assert server.predict("scale", {"x": [[1.0, 2.0, 3.0, 4.0]]}).version == 1
        assert sorted(server.status()["models"]["fraud"]["versions"]) == ["1", "2", "3", "4"]


def test_validate_says_served_of_the_control_files_previous_stable_version(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    for version in ("1", "2"):  # the fleet on 2, with 1 kept loaded for an instant rollback
        assert cli(capsys, "switch", str(repository), "scale", version).returncode == 0
    checked = cli(capsys, "validate", str(repository))
    for version in (1, 2, 3):  # (1 read "not served by the version policy")
        assert f"OK      scale v{version} (served): " in checked.stdout, checked.stdout
    with inprocserve.Server(repository, control_interval_s=None) as server:  # what a server serves indeed
        assert server.predict("scale", {"x": [[1.0, 1.0, 1.0, 1.0]]}, version=1).version == 1


def test_validate_reports_every_problem(repository: Path) -> None:
    save_model(build_scale_model(), repository, "scale", 1)
    (repository / "scale" / "config.toml").write_text("[batching]\nmax_batch_size = -1\n")
    broken = repository / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"xx")
    (repository / "bad name!").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "inprocserve", "validate", str(repository)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "FAIL    scale: " in result.stdout and "max_batch_size must be >= 1" in result.stdout
    assert "FAIL    broken v1" in result.stdout
    assert "invalid model name 'bad name!'" in result.stdout


def test_validate_reports_a_control_file_the_servers_could_not_follow(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `validate` said "0 problem(s)" (exit 0) while a server started on the repository refused every request
    # (a control file it cannot read), or served another version than the fleet's (one that is not there).
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    assert cli(capsys, "switch", str(repository), "scale", "1").returncode == 0
    good = cli(capsys, "validate", str(repository))
    assert good.returncode == 0, good.stdout
    assert "OK      scale v1 (served): " in good.stdout  # the control file's stable version is served
    control = repository / ".inprocserve-control.json"
    document = control.read_text()
    control.write_text(document[:30])  # a hand edit gone wrong, or a sync caught half-way
    broken = cli(capsys, "validate", str(repository))
    assert broken.returncode == 1
    assert f"PROBLEM control file {control} is not valid JSON" in broken.stdout
    assert "a server started now refuses every request until it is fixed" in broken.stdout
    control.write_text(document)
    shutil.rmtree(repository / "scale" / "1")
    missing = cli(capsys, "validate", "--json", str(repository))
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["control_problems"] == [
        "scale: .inprocserve-control.json (revision 1) serves version(s) 1, not in the repository: a server "
        "started now serves another"
    ]


def test_validate_a_missing_repository(tmp_path: Path) -> None:
    assert main(["validate", str(tmp_path / "nowhere")]) == 2


def test_quantize_reports_size_speed_and_accuracy(tmp_path: Path) -> None:
    from inprocserve.testing import build_mlp_model

    source = save_model(build_mlp_model((64, 128, 4), seed=3), tmp_path, "mlp", 1)
    target = tmp_path / "mlp-int8.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "inprocserve", "quantize", str(source), str(target), "--seconds", "0.1", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["bytes_after"] < report["bytes_before"] * 0.5
    assert set(report["speed"]) == {"batch_1", "batch_64"}
    assert report["accuracy"]["y"]["label_agreement"] > 0.8
    assert report["accuracy"]["y"]["max_abs_diff"] < 0.2
    import inprocserve  # the quantized model serves like any other

    with inprocserve.Server() as server:
        server.load("mlp", path=target)
        assert server.predict("mlp", np.ones((2, 64), np.float32))["y"].shape == (2, 4)


def test_quantize_reports_the_accuracy_of_a_scikit_learn_classifier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # skl2onnx's classifiers answer text labels and a ZipMap of scores, neither a float array: the report had
    # no accuracy line at all, so a quantized classifier looked as good as its original whatever it answered.
    source = save_model(build_string_label_classifier(), tmp_path, "species", 1)
    assert main(["quantize", "--seconds", "0.05", str(source), str(tmp_path / "species-int8.onnx")]) == 0
    out = capsys.readouterr().out
    assert "accuracy on 256 random rows, output_label: agreement 100.0%" in out
    assert "accuracy on 256 random rows, output_probability: max abs diff 0, label agreement 100.0%" in out


def test_the_quantize_examples_of_the_help_run_as_written(tmp_path: Path) -> None:
    # The first example wrote into models/fraud/3/, a folder a repository does not have yet: copied from
    # --help, it failed with "the target's folder models/fraud/3 does not exist" (exit status 2).
    from inprocserve.testing import build_mlp_model

    save_model(build_mlp_model((16, 8, 2), seed=1), tmp_path / "models", "fraud", 2)
    shutil.copy(tmp_path / "models" / "fraud" / "2" / "model.onnx", tmp_path / "model.onnx")
    examples = set()
    for args in (["--help"], ["quantize", "--help"]):
        help_text = run_cli(*args).stdout
        examples |= {
            tuple(line.split("#")[0].split())
            for line in help_text.splitlines()
            if line.startswith("  python -m inprocserve quantize ")
        }
    assert len(examples) >= 2
    for example in sorted(examples):
        command = [sys.executable, *example[1:], "--seconds", "0.05"]  # (python -m inprocserve quantize ...)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # (this checkout, from another working directory)
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120)
        assert done.returncode == 0, (example, done.stderr)


def test_quantize_reports_the_rows_a_fixed_batch_model_took(tmp_path: Path) -> None:
    # A model exported with a fixed batch axis of 3 takes 3 rows whatever is asked: the report said its
    # answers were compared on 256 rows and its speed measured at batches of 1 and 64 (twice the same run).
    from inprocserve.testing import build_sum_model

    source = save_model(build_sum_model(fixed_batch=3), tmp_path, "sum", 1)
    target = tmp_path / "sum-int8.onnx"
    command = [sys.executable, "-m", "inprocserve", "quantize", str(source), str(target), "--seconds", "0.05"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "accuracy on 3 random rows, total: max abs diff 0" in result.stdout
    assert "speed, batch 3: " in result.stdout and "batch 64" not in result.stdout
    report = json.loads(subprocess.run([*command, "--json"], capture_output=True, text=True, check=True).stdout)
    assert report["sample_rows"] == 3 and set(report["speed"]) == {"batch_3"}


def run_cli(*args: str, blocked: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m inprocserve ARGS`` in a child process; ``blocked`` makes that module unimportable there."""
    code = "import sys, runpy\n"
    if blocked:
        code += f"sys.modules[{blocked!r}] = None\n"  # import of it raises ImportError, as if not installed
    code += "sys.argv = ['inprocserve', *sys.argv[1:]]\nrunpy.run_module('inprocserve', run_name='__main__')\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False, timeout=60)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m inprocserve ARGS`` run in this process, answered as ``run_cli`` answers: a child's start (a
    second or more of a loaded machine's time each) only matters to the tests of the entry point itself."""
    capsys.readouterr()  # (what the test printed before is not the command's)
    try:
        status = main(list(args))
    except SystemExit as exit_info:  # (argparse: --help, or arguments it refuses)
        status = exit_info.code if isinstance(exit_info.code, int) else 2
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["inprocserve", *args], status, captured.out, captured.err)


def test_version_names_the_library_runtime_and_python(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"inprocserve {inprocserve.__version__} (onnxruntime ")
    assert "Python 3." in out


@pytest.mark.parametrize("command", [None, "inspect", "validate", "quantize", "status"])
def test_help_shows_examples_without_rest_markup(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"] if command else ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:\n  python -m inprocserve " + (command or "") in out
    assert "``" not in out and ":class:" not in out


def test_every_command_has_help_examples() -> None:
    assert len(COMMANDS) >= 4  # a new command added to COMMANDS is covered by the parametrized test above


def test_validate_json_reports_every_model_and_problem(repository: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_model(build_scale_model(), repository, "scale", 1)
    save_model(build_scale_model(), repository, "scale", 2)
    broken = repository / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"xx")
    (repository / "notes.txt").write_text("hello")
    result = cli(capsys, "validate", "--json", str(repository))
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["models"]["scale"]["versions"]["1"] == {
        "ok": True,
        "served": False,
        "error": None,
        "signature": {
            "inputs": [{"name": "x", "type": "tensor(float)", "shape": ["batch", 4]}],
            "outputs": [{"name": "y", "type": "tensor(float)", "shape": ["batch", 4]}],
            "batchable": True,
        },
    }
    assert report["models"]["scale"]["versions"]["2"]["served"] is True
    failed = report["models"]["broken"]["versions"]["1"]
    assert failed["ok"] is False and "cannot load" in failed["error"]
    assert len(report["problems"]) == 2
    expected = f"{repository / 'notes.txt'}: not a model folder (expected <model>/<version>/model.onnx)"
    assert report["layout_problems"] == [expected]


def test_validate_json_of_a_good_repository_exits_zero(
    scale_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = cli(capsys, "validate", "--json", str(scale_repository))
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout)["ok"] is True


def test_validate_json_of_a_missing_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = cli(capsys, "validate", "--json", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "is not a directory" in json.loads(result.stdout)["problems"][0]


def test_validate_accepts_the_warmup_and_reference_files_the_docs_describe(
    scale_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = scale_repository / "scale"
    np.savez(folder / "warmup.npz", x=np.ones((8, 4), np.float32))
    np.savez(folder / "reference.npz", x=np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32))
    (folder / "config.toml").write_text(
        '[warmup]\ninputs_file = "warmup.npz"\n\n[drift]\nreference_file = "reference.npz"\nwindow = 100\n'
    )
    result = cli(capsys, "validate", str(scale_repository))
    assert result.returncode == 0, result.stdout
    assert "1 model(s), 0 problem(s)" in result.stdout


def test_validate_loads_the_drift_reference_a_config_names(
    scale_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = scale_repository / "scale"
    np.savez(folder / "reference.npz", other=np.ones(3))  # none of the model's inputs: the server refuses it
    (folder / "config.toml").write_text('[drift]\nreference_file = "reference.npz"\n')
    result = cli(capsys, "validate", str(scale_repository))
    assert result.returncode == 1
    assert "holds none of the model's inputs or outputs" in result.stdout


def test_validate_points_a_model_file_outside_a_version_folder_to_one(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repository / "fraud").mkdir()
    save_model(build_scale_model(), repository, "fraud", 1).rename(repository / "fraud" / "model.onnx")
    result = cli(capsys, "validate", str(repository))
    assert result.returncode == 1
    assert f"move it into a version folder: {repository / 'fraud'}/1/model.onnx" in result.stdout


def test_quantize_without_onnx_names_the_extra(tmp_path: Path) -> None:
    source = save_model(build_scale_model(), tmp_path, "scale", 1)
    result = run_cli("quantize", str(source), str(tmp_path / "q.onnx"), blocked="onnx")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: quantize needs onnx: pip install 'inprocserve[quantize]'"


def test_require_names_the_extra_and_refuses_unknown_ones() -> None:
    assert require("json", extra="otel", feature="x").dumps({}) == "{}"
    with pytest.raises(ImportError, match=r"the thing needs no_such_module_xyz: pip install 'inprocserve\[remote\]'"):
        require("no_such_module_xyz", extra="remote", feature="the thing")
    with pytest.raises(ValueError, match="unknown extra 'fast'"):
        require("json", extra="fast", feature="x")


# -- status: a real Flask app with the extension, served over HTTP on 127.0.0.1 ------------------------


@pytest.fixture
def flask_app_url(repository: Path) -> Iterator[str]:
    flask = pytest.importorskip("flask")
    pytest.importorskip("inprocserve_flask")
    from inprocserve_flask import Inprocserve
    from werkzeug.serving import make_server

    save_model(build_scale_model(), repository, "scale", 1)
    broken = repository / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"xx")
    app = flask.Flask("status_app")
    app.config["INPROCSERVE_REPOSITORY"] = str(repository)
    app.config["INPROCSERVE_URL_PREFIX"] = "/api/-/inprocserve"

    @app.before_request
    def guard() -> object:  # an operator guarding every endpoint with the admin token
        if flask.request.headers.get("Authorization") != "Bearer s3cret":
            return flask.jsonify({"error": "unauthorized"}), 401
        return None

    extension = Inprocserve(app)
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_port}"
    finally:
        http.shutdown()
        thread.join(timeout=10)
        http.server_close()
        extension.close(app)


def test_status_summarizes_a_running_app(flask_app_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = cli(capsys, "status", "--token", "s3cret", flask_app_url + "/api/-/inprocserve")
    assert result.returncode == 1, result.stderr  # one model is not ready
    lines = result.stdout.splitlines()
    assert lines[0] == flask_app_url + "/api/-/inprocserve/models"
    assert lines[1].startswith("server open, onnxruntime ")
    assert "broken: NOT READY" in lines
    assert any(line.startswith("  v1: failed: ") and "cannot load" in line for line in lines)
    assert "scale: ready, v1 answers by default" in lines
    assert "  v1: ready, serving: 0 batches, 0 rows, 0 queued, 0 in flight" in lines


def test_status_without_the_token_shows_the_worker_the_revision_and_the_kill_switch(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An operator turns the kill switch on and a canary, then checks with `status` (no token: /models is
    # open). The summary said "repository (none)", showed no control revision (its line needed the control
    # file's path, which the view without the token drops), no worker, and nothing of the kill switch or
    # the canary: it read the same before and after the commands.
    flask = pytest.importorskip("flask")
    pytest.importorskip("inprocserve_flask")
    from inprocserve_flask import Inprocserve
    from werkzeug.serving import make_server

    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    assert cli(capsys, "kill", str(repository), "scale").returncode == 0
    assert cli(capsys, "canary", str(repository), "scale", "1", "10").returncode == 0
    app = flask.Flask("status_app")
    app.config.update(INPROCSERVE_REPOSITORY=str(repository), INPROCSERVE_ADMIN_TOKEN="s3cret-" + "x" * 24)
    extension = Inprocserve(app)
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        result = cli(capsys, "status", f"http://127.0.0.1:{http.server_port}")
        wrong = cli(capsys, "status", "--token", "s3cret", f"http://127.0.0.1:{http.server_port}")
    finally:
        http.shutdown()
        thread.join(timeout=10)
        http.server_close()
        extension.close(app)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].endswith("repository (path hidden: --token-file gives the admin token)")
    # /models answers a token the app does not take as it answers none: the summary said "--token" to an
    # operator who had given one
    assert wrong.returncode == 0, wrong.stderr
    assert wrong.stdout.splitlines()[1].endswith(
        "(path hidden: the app did not take the token given as its admin token)"
    )
    assert lines[2].startswith("answered by worker pid ")
    assert "control revision 2" in lines
    assert "  KILL SWITCH ON: the stable version answers every request (`resume` turns it off)" in lines
    assert "  control file: canary v1 for 10% of users" in lines


def test_status_json_is_the_endpoint_document(flask_app_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = cli(capsys, "status", "--json", "--token", "s3cret", flask_app_url + "/api/-/inprocserve/models")
    document = json.loads(result.stdout)
    assert document["models"]["scale"]["ready"] is True
    assert document["models"]["broken"]["ready"] is False


def test_status_without_the_token_says_to_pass_it(flask_app_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = cli(capsys, "status", flask_app_url + "/api/-/inprocserve/models")
    assert result.returncode == 2
    assert "answered HTTP 401 UNAUTHORIZED: pass the admin token with --token" in result.stderr
    wrong = cli(capsys, "status", "--token", "s3cre", flask_app_url + "/api/-/inprocserve/models")
    assert wrong.returncode == 2  # (not "pass the admin token": it was passed, and refused)
    assert "answered HTTP 401 UNAUTHORIZED: the token given is not the one it takes" in wrong.stderr


def test_status_of_a_wrong_path_and_of_nothing_listening(
    flask_app_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = cli(capsys, "status", "--token", "s3cret", flask_app_url)  # the app mounts the endpoint elsewhere
    assert wrong.returncode == 2
    assert "HTTP 404" in wrong.stderr and "give the full URL" in wrong.stderr
    port = reserved_port()  # nothing listens there
    refused = cli(capsys, "status", f"http://127.0.0.1:{port}", "--timeout", "5")
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"error: cannot reach http://127.0.0.1:{port}/-/inprocserve/models: ")


def test_status_refuses_what_is_not_an_http_url(capsys: pytest.CaptureFixture[str]) -> None:
    result = cli(capsys, "status", "ftp://example.invalid/x")
    assert result.returncode == 2
    assert "is not an http:// or https:// URL with a host" in result.stderr


@pytest.mark.parametrize("url", ["http://[::1:8000", "http://127.0.0.1:80000", "http://127.0.0.1:port"])
def test_status_names_a_url_it_cannot_read(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # A typo in the address said only "error: Invalid IPv6 URL", "error: Port out of range 0-65535" or
    # "error: Port could not be cast to integer value as 'port'", naming neither the argument nor the address.
    result = cli(capsys, "status", url)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {url!r} is not a URL that can be read (")
    assert result.stderr.count("\n") == 1
    assert "e.g. http://127.0.0.1:8000" in result.stderr


def test_a_required_gpu_that_is_missing_says_how_to_install_the_gpu_build() -> None:
    from inprocserve._ort_rules import resolve_providers

    with pytest.raises(inprocserve.ModelLoadError, match=r"install onnxruntime-gpu in place of onnxruntime"):
        resolve_providers(inprocserve.PoolConfig(require_gpu=True), device_id=0, cuda_usable=False)


def test_status_names_the_version_that_answers_by_default_the_configured_stable_one(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # config.toml's stable = 1 answers default traffic; the summary named default_version, the latest ready
    # version (3), until a switch: "v3 answers by default" while v1 answered every request.
    from inprocserve._cli_status import summarize

    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    (repository / "scale" / "config.toml").write_text('version_policy = "all"\n[rollout]\nstable = 1\n')
    server = inprocserve.Server(repository, control_interval_s=None)
    try:
        assert server.predict("scale", np.ones((1, 4), np.float32)).version == 1
        document = json.loads(json.dumps(server.status()))
        assert "scale: ready, v1 answers by default" in summarize(document)
        server.switch("scale", 2)
        assert "scale: ready, v2 answers by default" in summarize(json.loads(json.dumps(server.status())))
    finally:
        server.close()
    del document["models"]["scale"]["answering_version"]  # an app of before answering_version
    assert "scale: ready, v3 answers by default" in summarize(document)
