"""Review of the removal of the gate's name of a version gone from disk (b7e38d5): what must not read as "the
version the gate named is gone, the rest of the model is there"."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from inprocserve._control import ControlFile

from .conftest import ServerFactory
from .test_fleet_hold3 import _stable
from .test_fleet_hold4 import _gate_named_without_a_watcher

X = {"x": np.ones((1, 4), np.float32)}


def test_a_redeploy_that_empties_the_model_folder_for_a_moment_keeps_the_gate_s_name(
    repository: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    """Version 1 is the gate's name (2 held back). The release is deployed again as deploys do, the version folders
    removed and copied back: a refresh in between finds the model folder with no version at all. No worker can
    serve another version then (nothing is there to split the fleet over), yet the name was removed for good, and
    once the copy was back every worker served the incompatible version 2. Now the name stays, and 1 serves."""
    running = _gate_named_without_a_watcher(repository, make_server)
    release = tmp_path / "release"
    release.mkdir()
    for version in ("1", "2"):
        shutil.move(repository / "m" / version, release / version)
    running.refresh()  # (the model folder is there, empty: "no version folder left", unloaded)
    assert _stable(repository) == (1, True)
    for version in ("1", "2"):
        shutil.move(release / version, repository / "m" / version)
    running.refresh()
    running.sync_control()
    assert running.predict("m", X).version == 1
    assert make_server(repository, poll_interval_s=None).predict("m", X).version == 1


def test_a_worker_that_starts_while_the_gate_s_version_is_copied_again_leaves_the_name(
    repository: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    """Version 1 is the gate's name (2 held back); its model file is written again in place (``rm`` then ``cp``,
    ``tar -x`` over the release), and a worker starts (recycled, scaled up) while the folder is there without its
    model file. That worker removed the name for the fleet, and once the file was back every worker served the
    incompatible version 2 for good. Now a version folder that is there is not "gone from disk": the name stays."""
    running = _gate_named_without_a_watcher(repository, make_server)
    model_file = repository / "m" / "1" / "model.onnx"
    copy = tmp_path / "model.onnx"
    shutil.move(model_file, copy)
    make_server(repository, poll_interval_s=None, control_interval_s=None, strict=False)
    assert _stable(repository) == (1, True)
    shutil.move(copy, model_file)
    running.sync_control()
    assert running.predict("m", X).version == 1
    assert make_server(repository, poll_interval_s=None).predict("m", X).version == 1


def test_a_removal_retried_at_a_read_of_the_control_file_leaves_a_version_restored_since(
    repository: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    """Version 1, the gate's name, is deleted; the refresh that finds it gone cannot remove the name (the control
    file's lock is held), and status says so. The operator restores version 1. The next read of the control file
    (the watcher's, every 0.5 s) tried the removal again on the last scan's word and removed the name of a version
    back on disk: the fleet went to the incompatible version 2 for good. Now the name stays."""
    running = _gate_named_without_a_watcher(repository, make_server)
    shutil.move(repository / "m" / "1", tmp_path / "1")
    with ControlFile(repository)._locked():
        running.refresh()
    assert running.status()["models"]["m"]["fleet_hold_error"] is not None
    shutil.move(tmp_path / "1", repository / "m" / "1")  # restored
    running.sync_control()
    assert _stable(repository) == (1, True)
    assert running.status()["models"]["m"]["fleet_hold_error"] is None  # (not "gone from disk" until a refresh)
    running.refresh()
    assert running.predict("m", X).version == 1
    assert running.status()["models"]["m"]["fleet_hold_error"] is None
