"""The gate's name for the fleet, continued: the named version's folder left without its model file holds nothing
once it has stayed so a while; a model unloaded whole and loaded again starts with no hold of its own."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from inprocserve._control import ControlFile
from inprocserve.testing import ManualClock

from .conftest import ServerFactory
from .test_fleet_hold3 import _drop, _stable
from .test_fleet_hold6 import _gate_named_with_a_clock
from .test_fleet_hold7 import _counted
from .test_telemetry import Otel
from .test_telemetry import otel as otel  # the fixture: one SDK per process

X = {"x": np.ones((1, 4), np.float32)}
FEATURES = {"features": np.ones((1, 4), np.float32)}


def test_the_named_version_s_folder_left_without_its_model_file_loses_the_name_once_settled(
    repository: Path, make_server: ServerFactory
) -> None:
    """``rm models/m/1/model.onnx``, the folder kept: the poller retires version 1 after 2 s (it cannot load it), yet
    the gate's name of 1 stayed in the control file for good: every running worker served 1 from memory while each
    worker that started served the held version 2, the split the name exists to prevent. Now the name goes once the
    file has stayed missing as long as a folder gone must (never at the first sight: it may be being written)."""
    clock = ManualClock()
    running = _gate_named_with_a_clock(repository, make_server, clock)
    (repository / "m" / "1" / "model.onnx").unlink()
    running._registry.refresh(settle_empty_configs=True)  # a poll: the file may be being written again
    assert _stable(repository) == (1, True)
    assert running.predict("m", X).version == 1
    clock.advance(2.0)
    running._registry.refresh(settle_empty_configs=True)
    assert _stable(repository) == (None, False)
    assert running.predict("m", FEATURES).version == 2
    assert make_server(repository, poll_interval_s=None, strict=False).predict("m", FEATURES).version == 2


def test_a_refresh_asked_for_removes_the_name_of_a_folder_left_without_its_model_file_once_settled(
    repository: Path, make_server: ServerFactory
) -> None:
    """A worker without a poller (refreshes asked for only): the first refresh that finds the file missing keeps the
    name (a worker that starts while the file is written again must not remove it for the fleet); one at least
    2 s later removes it."""
    clock = ManualClock()
    running = _gate_named_with_a_clock(repository, make_server, clock)
    (repository / "m" / "1" / "model.onnx").unlink()
    running.refresh()
    assert _stable(repository) == (1, True)
    clock.advance(2.0)
    running.refresh()
    assert _stable(repository) == (None, False)
    assert running.predict("m", FEATURES).version == 2


def test_a_model_unloaded_and_loaded_again_finds_its_hold_as_new(
    repository: Path, make_server: ServerFactory, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    """``unload("m")`` forgot the gate's writes due for ``m`` but kept its table of versions held back: loaded again,
    the hold of 2 against 1 was taken as one already reported, so the warning (with how to promote 2) was not logged
    and ``inprocserve.model.incompatible`` not counted for the model's new life. Now the reload starts clean."""
    running = _gate_named_with_a_clock(repository, make_server, ManualClock())
    running.unload("m")
    counted = _counted(otel)
    caplog.clear()
    with caplog.at_level("WARNING", logger="inprocserve"):
        running.load("m")
    assert [r.getMessage() for r in caplog.records if "version 2 is not compatible with version 1" in r.getMessage()]
    assert _counted(otel) == counted + 1
    assert running.predict("m", X).version == 1
    assert running.status()["models"]["m"]["versions"]["2"]["compatible"] is False


def test_the_name_stays_while_the_named_version_s_folder_is_copied_again_with_its_model_file_last(
    repository: Path, make_server: ServerFactory
) -> None:
    """``rm -rf models/m/1 && rsync -a release/m/1 models/m/`` (or ``aws s3 sync``, ``gsutil cp``): the folder is
    back at once, and the model file is written under a temporary name and renamed at its end, so the folder has no
    model file for as long as the copy takes. The name was removed 2 s after the folder went away, mid-copy, and for
    good: every worker went to the incompatible version 2. A folder whose entries change is being written: the
    name is removed only once it has stayed without its file, unchanged, for 2 s."""
    clock = ManualClock()
    running = _gate_named_with_a_clock(repository, make_server, clock)
    release = (repository / "m" / "1" / "model.onnx").read_bytes()
    shutil.rmtree(repository / "m" / "1")
    running._registry.refresh(settle_empty_configs=True)
    partial = repository / "m" / "1" / ".model.onnx.Xa81Qz"  # (rsync's temporary name)
    partial.parent.mkdir()
    for written in range(1, 6):  # a poll a second, the copy going on
        with partial.open("ab") as file:
            file.write(release[: len(release) * written // 10])
        clock.advance(1.0)
        running._registry.refresh(settle_empty_configs=True)
        assert _stable(repository) == (1, True), f"the name was removed {written} s into the copy"
        assert running.predict("m", X).version == 1  # (from memory, the hold kept)
    partial.write_bytes(release)
    partial.rename(repository / "m" / "1" / "model.onnx")
    clock.advance(1.0)
    running._registry.refresh(settle_empty_configs=True)
    assert _stable(repository) == (1, True)
    assert make_server(repository, poll_interval_s=None, strict=False).predict("m", X).version == 1


def test_the_name_goes_once_the_emptied_folder_has_stayed_unchanged_after_a_copy_stopped(
    repository: Path, make_server: ServerFactory
) -> None:
    """A copy that stopped half-way (its temporary file left there) holds nothing: the name goes 2 s after the
    folder last changed."""
    clock = ManualClock()
    running = _gate_named_with_a_clock(repository, make_server, clock)
    (repository / "m" / "1" / "model.onnx").unlink()
    (repository / "m" / "1" / ".model.onnx.Xa81Qz").write_bytes(b"\0" * 100)
    running._registry.refresh(settle_empty_configs=True)
    clock.advance(1.0)
    (repository / "m" / "1" / ".model.onnx.Xa81Qz").write_bytes(b"\0" * 200)
    running._registry.refresh(settle_empty_configs=True)
    clock.advance(1.5)
    running._registry.refresh(settle_empty_configs=True)
    assert _stable(repository) == (1, True)  # (1.5 s since it last changed)
    clock.advance(0.5)
    running._registry.refresh(settle_empty_configs=True)
    assert _stable(repository) == (None, False)
    assert running.predict("m", FEATURES).version == 2


def test_an_advance_records_no_emptied_folder_as_the_version_to_roll_back_to(
    repository: Path, make_server: ServerFactory
) -> None:
    """``rm models/m/1/model.onnx`` (the folder kept) in the poll that finds a compatible 3: the poll keeps 1 as
    loaded a while (its file may be being written again), and the gate names 3 in place of 1. The advance recorded 1
    as ``previous_stable`` as its folder was there, though no worker can load it: a rollback would send the fleet
    to a version it cannot serve. As with a folder gone, the one recorded before stays."""
    clock = ManualClock()
    running = _gate_named_with_a_clock(repository, make_server, clock)
    (repository / "m" / "1" / "model.onnx").unlink()
    _drop(repository, 3, compatible=True)
    running._registry.refresh(settle_empty_configs=True)
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.gate_named, state.previous_stable) == (3, True, None), state
    assert running.predict("m", X).version == 3


def test_the_name_stays_while_an_external_data_file_in_a_subfolder_is_copied_before_the_model_file(
    repository: Path, make_server: ServerFactory
) -> None:
    """``aws s3 sync`` copies keys in their order, so ``1/data/weights.bin`` (external data the model names in a
    subfolder) is written before ``1/model.onnx``: for as long as that one large file takes, only the subfolder's
    content changes. The fingerprint looked at the version folder's own entries, the subfolder's unchanged, so the
    name was removed 2 s into that file's copy, for good."""
    clock = ManualClock()
    running = _gate_named_with_a_clock(repository, make_server, clock)
    shutil.rmtree(repository / "m" / "1")
    running._registry.refresh(settle_empty_configs=True)
    partial = repository / "m" / "1" / "data" / "weights.bin.5f2A9c"  # (aws's temporary name, in its folder)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * 1000)
    running._registry.refresh(settle_empty_configs=True)
    for written in range(2, 7):  # a poll a second, the one file still being written
        with partial.open("ab") as file:
            file.write(b"\0" * 1000)
        clock.advance(1.0)
        running._registry.refresh(settle_empty_configs=True)
        assert _stable(repository) == (1, True), f"the name was removed {written - 1} s into the file's copy"
    clock.advance(2.0)  # (the copy stopped: nothing changes any more)
    running._registry.refresh(settle_empty_configs=True)
    assert _stable(repository) == (None, False)


def test_the_named_version_s_model_file_left_a_dangling_link_loses_the_name_once_settled(
    repository: Path, make_server: ServerFactory
) -> None:
    """A release folder deleted under a version whose ``model.onnx`` links into it: no worker that starts can load
    that version, so a dangling link counts as no model file, and the name goes once settled, as for a file
    removed (a ``lexists`` test kept the name, and so the fleet split, for good)."""
    clock = ManualClock()
    running = _gate_named_with_a_clock(repository, make_server, clock)
    model_file = repository / "m" / "1" / "model.onnx"
    model_file.unlink()
    model_file.symlink_to(repository.parent / "deleted-release" / "model.onnx")
    running._registry.refresh(settle_empty_configs=True)
    assert _stable(repository) == (1, True)
    clock.advance(2.0)
    running._registry.refresh(settle_empty_configs=True)
    assert _stable(repository) == (None, False)
    assert running.predict("m", FEATURES).version == 2
