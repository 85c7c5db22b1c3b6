"""One model's trouble stays with that model: a load that fails after its sessions are built, a refresh that
fails for one model, a model folder the process cannot read. The other models load, serve and keep
following their files; repeated problems are logged once."""

from __future__ import annotations

import json
import logging
import os
import shutil
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import _registry
from inprocserve._model import ModelVersion
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory, run_python


def answer(server: inprocserve.Server, model: str) -> float:
    return float(server.predict(model, np.ones((1, 4), np.float32))["y"][0, 0])


def test_a_load_failing_after_its_sessions_are_built_fails_that_version_alone(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Something past the backend's build (the run-cost probe, the batcher, drift) raising what no check
    # foresaw: the stand-in for a bug, the one thing here that is not real.
    save_model(build_scale_model(2.0), repository, "broken", 1)
    save_model(build_scale_model(3.0), repository, "good", 1)
    closed: list[str] = []
    real_measure = ModelVersion._measure_run_cost

    def measure(self: ModelVersion, signature: object, **options: Any) -> object:
        if self.name == "broken":
            original_close = self.backend.close
            self.backend.close = lambda: (closed.append(self.name), original_close())[1]  # type: ignore[method-assign]
            raise RuntimeError("probe exploded")
        return real_measure(self, signature, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(ModelVersion, "_measure_run_cost", measure)
    server = make_server(repository)
    assert answer(server, "good") == 3.0
    version = server.status()["models"]["broken"]["versions"]["1"]
    assert version["state"] == "failed"
    assert "RuntimeError: probe exploded" in version["error"]
    assert closed == ["broken"]  # its sessions were released
    with pytest.raises(inprocserve.ModelNotFoundError):
        server.predict("broken", np.ones((1, 4), np.float32))


def test_a_refresh_failing_for_one_model_still_refreshes_the_others(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_model(build_scale_model(2.0), repository, "alpha", 1)
    save_model(build_scale_model(2.0), repository, "zeta", 1)
    server = make_server(repository)
    real_sync = _registry.Registry._sync_model

    def sync(self: _registry.Registry, name: str, *args: object, **kwargs: object) -> list[str]:
        if name == "alpha":  # the stand-in for an unforeseen failure of one model (a bug)
            raise TypeError("something unforeseen")
        return real_sync(self, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_registry.Registry, "_sync_model", sync)
    save_model(build_scale_model(5.0), repository, "zeta", 2)  # sorts after the failing model
    problems = server.refresh()
    assert problems == ["model 'alpha': refresh failed: TypeError: something unforeseen"]
    assert server.models == {"alpha": [1], "zeta": [2]}
    assert answer(server, "zeta") == 5.0
    assert answer(server, "alpha") == 2.0  # what it served before keeps serving


def test_repository_problems_are_logged_once_while_they_last(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    (repository / "README.md").write_text("not a model\n")
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server = make_server(repository)
        for _ in range(4):
            assert any("README.md" in problem for problem in server.refresh())  # still reported each time
        assert caplog.text.count("README.md") == 1  # logged at start-up, not at every refresh
        (repository / "README.md").unlink()
        server.refresh()
        (repository / "README.md").write_text("back\n")
        server.refresh()
        server.refresh()
    assert caplog.text.count("README.md") == 2  # it went away and came back: logged once more


def test_a_models_setting_naming_no_model_is_warned_about_once(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    save_model(build_scale_model(2.0), repository, "fraud", 1)
    typo = {"frad": inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_batch_size=8))}
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server = make_server(repository, models=typo)
        server.refresh()
    assert caplog.text.count("models= names 'frad', which is not in the model repository (its models: fraud)") == 1


# -- a folder the process cannot read -----------------------------------------------------------------------

_UNREADABLE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import numpy as np
    import inprocserve

    repository = Path(sys.argv[1])
    x = np.ones((1, 4), np.float32)
    report = {}
    with inprocserve.Server(repository, control_interval_s=None) as server:
        report["serving_before"] = server.models
        server.unload("locked", 2)  # by hand: it stays unloaded across refreshes
        os.chmod(repository / "locked", 0o000)
        try:
            report["problems"] = server.refresh()
            report["serving_while_locked"] = server.models
            report["locked_answer"] = float(server.predict("locked", x)["y"][0, 0])
        finally:
            os.chmod(repository / "locked", 0o755)
        server.refresh()
        report["serving_once_readable"] = server.models
    os.chmod(repository / "locked", 0o000)
    try:
        with inprocserve.Server(repository, control_interval_s=None) as server:
            report["start_while_locked"] = server.models
            report["good_answer"] = float(server.predict("good", x)["y"][0, 0])
    finally:
        os.chmod(repository / "locked", 0o755)
    print(json.dumps(report))
    """
)


def _without_file_access_override(folder: Path) -> list[str]:
    """The command prefix that makes file permissions apply to this process: root ignores them unless its
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH are dropped. Tried first on a file of ``folder``: setpriv drops
    a capability from the bounding set only with CAP_SETPCAP, and without it (a container given fewer
    capabilities) it runs the command with every capability, saying nothing."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux), so file permissions cannot be made to apply")
    prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]
    probe = folder / "permission-probe"
    probe.touch(mode=0o000)
    try:
        opened = run_python("import sys; open(sys.argv[1]).close()", str(probe), prefix=prefix)
    finally:
        probe.unlink()
    if opened.returncode == 0:
        pytest.skip(
            "running as root where setpriv cannot drop CAP_DAC_OVERRIDE (this process lacks CAP_SETPCAP), "
            "so file permissions cannot be made to apply"
        )
    return prefix


def test_a_model_folder_that_cannot_be_read_leaves_the_others_serving(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "good", 1)
    save_model(build_scale_model(7.0), repository, "locked", 1)
    save_model(build_scale_model(8.0), repository, "locked", 2)
    result = run_python(_UNREADABLE_SCRIPT, str(repository), prefix=_without_file_access_override(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["serving_before"] == {"good": [1], "locked": [2]}
    # unreadable while it serves: reported, and what was loaded from it keeps serving
    assert len(report["problems"]) == 1 and "locked: cannot be read (Permission denied)" in report["problems"][0]
    assert report["serving_while_locked"] == {"good": [1], "locked": [1]}
    assert report["locked_answer"] == 7.0
    assert report["serving_once_readable"] == {"good": [1], "locked": [1]}  # version 2 stays unloaded
    # unreadable at start: the server starts with the others
    assert report["start_while_locked"] == {"good": [1]}
    assert report["good_answer"] == 2.0


_LOCKED_FILE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import numpy as np
    import onnx
    import inprocserve
    from inprocserve.testing import build_scale_model

    repository, locked = Path(sys.argv[1]), sys.argv[2]
    x = np.ones((1, 4), np.float32)
    report = {}
    with inprocserve.Server(repository, control_interval_s=None) as server:
        # a deploy copies version 2 in with a umask that keeps the server out of one of its files
        folder = repository / "m" / "2"
        folder.mkdir()
        onnx.save_model(
            build_scale_model(2.0), folder / "model.onnx", save_as_external_data=True, location="weights.bin",
            size_threshold=0,
        )
        os.chmod(folder / locked, 0o200)
        report["problems"] = server.refresh()
        os.chmod(folder / locked, 0o644)  # the operator reads the error and fixes the permissions
        report["after_chmod"] = server.refresh()
        report["serving"] = server.models
        report["answer"] = float(server.predict("m", x)["y"][0, 0])
        report["unchanged"] = server.refresh()
    print(json.dumps(report))
    """
)


@pytest.mark.parametrize("locked", ["model.onnx", "weights.bin"])
def test_a_version_that_failed_on_a_file_it_could_not_read_loads_once_its_permissions_are_fixed(
    tmp_path: Path, locked: str
) -> None:
    repository = tmp_path / "models"
    save_model(build_scale_model(1.0), repository, "m", 1)
    result = run_python(_LOCKED_FILE_SCRIPT, str(repository), locked, prefix=_without_file_access_override(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert len(report["problems"]) == 1 and "Permission denied" in report["problems"][0], report["problems"]
    # the chmod changes neither the contents, the size, the modification time nor the inode: it is the fix
    assert report["after_chmod"] == []
    assert report["serving"] == {"m": [2]}
    assert report["answer"] == 2.0
    assert report["unchanged"] == []
