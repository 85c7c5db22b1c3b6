"""A version folder that holds remote.toml instead of model.onnx is a version: the scan, the pre-fork check,
the integrity check and the CLI accept it (the server is asked for its signature only where the CLI loads)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve.__main__ import main
from inprocserve._cli_models import validate_repository
from inprocserve._integrity import check_version
from inprocserve._remote_model import read_remote_toml
from inprocserve._repository import is_remote, scan_repository
from inprocserve.testing import build_scale_model, save_model

from .test_remote_retries import Scripted


def write_remote(repository: Path, name: str, version: int, text: str) -> Path:
    path = repository / name / str(version) / "remote.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_scan_takes_remote_versions_beside_local_ones(repository: Path) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    remote = write_remote(repository, "scale", 2, 'url = "http://127.0.0.1:9"\nmodel = "scale"\n')
    scan = scan_repository(repository)
    assert scan.problems == []
    assert scan.models["scale"].versions == {1: repository / "scale" / "1" / "model.onnx", 2: remote}
    assert is_remote(scan.models["scale"].versions[2]) and not is_remote(scan.models["scale"].versions[1])


def test_a_version_with_both_files_is_skipped_with_a_problem(repository: Path) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    write_remote(repository, "scale", 1, 'url = "http://127.0.0.1:9"\nmodel = "scale"\n')
    scan = scan_repository(repository)
    assert scan.models["scale"].versions == {}
    assert any("both model.onnx and remote.toml" in problem for problem in scan.problems)


def test_a_linked_remote_toml_is_refused(repository: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.toml"
    target.write_text('url = "http://127.0.0.1:9"\nmodel = "scale"\n')
    (repository / "scale" / "1").mkdir(parents=True)
    (repository / "scale" / "1" / "remote.toml").symlink_to(target)
    scan = scan_repository(repository)
    assert scan.models["scale"].versions == {}
    assert any("remote.toml is a symbolic link" in problem for problem in scan.problems)


def test_check_version_reads_remote_toml(repository: Path) -> None:
    good = write_remote(repository, "scale", 1, 'url = "http://127.0.0.1:9"\nmodel = "scale"\n')
    check_version(good, model="scale", version=1)
    bad = write_remote(repository, "scale", 2, 'url = "http://127.0.0.1:9"\nmodel = "scale"\nretries = -1\n')
    with pytest.raises(inprocserve.ModelLoadError, match=r"model 'scale' version 2: .*remote\.toml: key 'retries'"):
        check_version(bad, model="scale", version=2)


def test_the_prefork_check_reads_remote_toml_without_contacting_the_server(repository: Path) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    write_remote(repository, "scale", 2, 'url = "http://127.0.0.1:9"\nmodel = "scale"\nversion = "4"\n')
    all_versions = inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all())
    report = inprocserve.check_repository(repository, config=all_versions)
    assert report["models"]["scale"][2] == {"remote": "http://127.0.0.1:9/v2/models/scale/versions/4"}
    assert report["models"]["scale"][1]["inputs"][0]["name"] == "x"
    write_remote(repository, "scale", 2, 'url = "http://127.0.0.1:9"\n')
    with pytest.raises(inprocserve.ModelLoadError, match="key 'model' is missing"):
        inprocserve.check_repository(repository, config=all_versions)


def test_cli_validate_asks_the_remote_server(repository: Path, scripted: Scripted) -> None:
    write_remote(repository, "scale", 1, f'url = "http://127.0.0.1:{scripted.server_port}"\nmodel = "scale"\n')
    write_remote(repository, "other", 1, 'url = "http://127.0.0.1:9"\nmodel = "other"\nconnect_timeout_s = 0.2\n')
    report = validate_repository(repository)
    scale = report["models"]["scale"]["versions"]["1"]
    assert scale["ok"] and scale["remote"] == f"http://127.0.0.1:{scripted.server_port}/v2/models/scale"
    assert scale["signature"]["inputs"] == [{"name": "x", "type": "tensor(float)", "shape": [None, 4]}]
    other = report["models"]["other"]["versions"]["1"]
    assert not other["ok"] and "cannot connect" in other["error"]
    assert not report["ok"]
    json.dumps(report)  # the CLI prints it as JSON


def test_cli_inspect_prints_a_remote_versions_signature(
    repository: Path, scripted: Scripted, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_remote(repository, "scale", 1, f'url = "http://127.0.0.1:{scripted.server_port}"\nmodel = "scale"\n')
    assert main(["inspect", str(path.parent)]) == 0
    out = capsys.readouterr().out
    assert f"served by http://127.0.0.1:{scripted.server_port}/v2/models/scale" in out
    assert "x: tensor(float) [?, 4]" in out
    assert main(["inspect", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"][0]["name"] == "y"
    scripted.shutdown()
    write_remote(repository, "scale", 1, 'url = "http://127.0.0.1:9"\nmodel = "scale"\nconnect_timeout_s = 0.2\n')
    assert main(["inspect", str(path)]) == 1
    assert "cannot connect" in capsys.readouterr().err


def test_a_server_keeps_serving_local_versions_beside_a_remote_one(repository: Path, make_server: Any) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    write_remote(repository, "scale", 2, 'url = "http://127.0.0.1:9"\nmodel = "scale"\nconnect_timeout_s = 0.2\n')
    all_versions = inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all())
    server = make_server(repository=repository, config=all_versions)
    assert 1 in server.models["scale"]
    assert "2" in server.status()["models"]["scale"]["versions"]  # the remote version is listed, not skipped
    np.testing.assert_array_equal(server.predict("scale", {"x": np.ones((1, 4), np.float32)}, version=1)["y"], 2.0)


def test_a_remote_version_whose_server_is_down_is_retried_at_each_refresh_but_logged_once(
    repository: Path, make_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    write_remote(repository, "scale", 2, 'url = "http://127.0.0.1:9"\nmodel = "scale"\nconnect_timeout_s = 0.2\n')
    with caplog.at_level(logging.ERROR, logger="inprocserve"):
        server = make_server(repository=repository)
        for _ in range(3):  # a poller refreshes every poll_interval_s
            (problem,) = server.refresh()
            assert "cannot connect" in problem  # tried again, and returned each time
            assert problem.startswith("model 'scale' version 2: http://127.0.0.1:9")  # which model, and where
    logged = [r for r in caplog.records if r.getMessage().startswith("model 'scale' version 2 failed to load")]
    assert len(logged) == 1  # not one error line per poll for as long as the model server is down
    assert server.models["scale"] == [1]
    assert "cannot connect" in server.status()["models"]["scale"]["versions"]["2"]["error"]


def test_a_remote_toml_key_this_release_does_not_know_is_served_without_it_and_warned_of(
    repository: Path, scripted: Scripted, make_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A rolling upgrade: the newer release reads a key (compression) that this one does not, and a typo of a
    # key it does (retires for retries). The version is served with the keys it knows, as a config.toml's
    # unknown keys are; it failed to load on every worker of the older release before.
    url = f"http://127.0.0.1:{scripted.server_port}"
    path = write_remote(repository, "scale", 1, f'url = "{url}"\nmodel = "scale"\nretires = 3\ncompression = "gzip"\n')
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server = make_server(repository=repository)
    answer = server.predict("scale", {"x": np.ones((2, 4), np.float32)})
    np.testing.assert_array_equal(answer["y"], 2.0)
    warning = server.status(include_paths=True)["models"]["scale"]["config_warning"]
    assert warning.startswith(f"{path}: this release of inprocserve does not know compression, retires (retries?),")
    assert warning.endswith("the keys it knows are binary_tensors, concurrency, connect_timeout_s, cooloff_s, "
                            "failure_threshold, headers, headers_from_env, max_row_bytes, model, protocol, "
                            "retries, retry_after_send, timeout_s, url, version")  # fmt: skip
    assert [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()] == [
        f"model 'scale' version 1: {warning}"
    ]
    assert server.status()["models"]["scale"]["versions"]["1"]["state"] == "ready"
    # fixed (or the newer release reads it): the next refresh loads the file again, and the warning is gone
    path.write_text(f'url = "{url}"\nmodel = "scale"\nretries = 3\n')
    assert server.refresh() == []
    assert server.status()["models"]["scale"]["config_warning"] is None


def test_cli_validate_fails_on_a_remote_toml_key_this_release_does_not_know(
    repository: Path, scripted: Scripted, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_remote(
        repository, "scale", 1, f'url = "http://127.0.0.1:{scripted.server_port}"\nmodel = "scale"\nretires = 3\n'
    )
    report = validate_repository(repository)
    assert report["models"]["scale"]["versions"]["1"]["ok"]  # a server serves it...
    assert not report["ok"]  # ...without the key: a deploy check catches the typo before the servers do
    assert "does not know retires (retries?)" in report["models"]["scale"]["config_warning"]
    assert main(["validate", str(repository)]) == 1
    assert f"PROBLEM scale: {path}: this release of inprocserve does not know retires (retries?)" in (
        capsys.readouterr().out
    )
    # the pre-fork check reads it as a server does, and inspect says it on stderr
    assert inprocserve.check_repository(repository)["models"]["scale"][1]["remote"].endswith("/v2/models/scale")
    assert main(["inspect", str(path)]) == 0
    assert "does not know retires (retries?)" in capsys.readouterr().err


def test_a_remote_toml_of_many_unknown_keys_names_a_few_and_counts_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "remote.toml"
    path.write_text('url = "http://127.0.0.1:9"\nmodel = "m"\n' + "".join(f"k{i:05} = 1\n" for i in range(30000)))
    ignored: list[str] = []
    assert read_remote_toml(path, ignored=ignored).model == "m"
    assert ignored == [f"k{i:05}" for i in range(20)] + ["29980 more"]
    with pytest.raises(inprocserve.ModelLoadError, match=r"remote\.toml: unknown key 'k00000'; the keys are binary_"):
        read_remote_toml(path)  # (without ignored: refused, naming the key)


def test_a_remote_toml_key_left_out_is_said_once_while_its_server_is_down(
    repository: Path, make_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A version whose model server is down is read again at each poll: its unknown key was logged at each one
    # (the failure itself once). It is said with the failure, which it may explain ([header] sends no token).
    save_model(build_scale_model(2.0), repository, "scale", 1)
    text = 'url = "http://127.0.0.1:9"\nmodel = "scale"\nconnect_timeout_s = 0.2\nretires = 3\n'
    write_remote(repository, "scale", 2, text)
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server = make_server(repository=repository)
        for _ in range(3):  # a poller refreshes every poll_interval_s
            (problem,) = server.refresh()
            assert "cannot connect" in problem and "does not know retires (retries?)" in problem
    said = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("model 'scale' version 2 failed to load: http://127.0.0.1:9")
    assert "does not know retires (retries?)" in server.status()["models"]["scale"]["versions"]["2"]["error"]
