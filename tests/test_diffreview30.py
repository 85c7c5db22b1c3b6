"""Review of the fleet hold's status and its waits: a worker that loses the race for the control file's lock to a
sibling writing the same name shows no fleet "not held"; ten new holds with the lock stuck wait once."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from pathlib import Path

import pytest

from inprocserve._cli_status import control_error, healthy
from inprocserve._control import ControlFile, ModelControl
from inprocserve.testing import ManualClock, build_mlp_model, save_model

from .conftest import ServerFactory
from .test_diffreview29 import _drop as _drop_into
from .test_fleet_hold import lock_waits
from .test_fleet_hold3 import _drop, _stable
from .test_fleet_hold6 import _gate_named_with_a_clock


def test_a_sibling_s_slow_write_of_the_same_name_does_not_show_the_fleet_not_held(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Every worker of the fleet finds the new hold at once; a sibling takes the lock and writes the same name,
    but its write holds the lock past this worker's 0.5 s wait (the folder's fsync on a slow share). The fleet is
    held: yet this worker showed ``FLEET NOT HELD`` (``status`` exited 1, failing the deploy's check) and warned
    that a worker that starts now serves version 2. Now a wait that ran out reads the file again, and a name
    already there is no failure."""
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    running = make_server(repository, poll_interval_s=None, control_interval_s=None)
    _drop(repository, 2, compatible=False)
    sibling = ControlFile(repository)
    locked = threading.Event()

    def slow_write() -> None:
        with sibling._locked():
            locked.set()
            time.sleep(0.25)
            control = sibling.read()
            named = dataclasses.replace(ModelControl(), stable=1, stable_by_gate=1)
            sibling._write(dataclasses.replace(control, revision=1, models={**control.models, "m": named}))
            time.sleep(0.6)  # (its folder's fsync)

    writer = threading.Thread(target=slow_write)
    writer.start()
    locked.wait(5)
    with caplog.at_level("WARNING", logger="inprocserve"):
        running.refresh()
    writer.join(5)
    assert _stable(repository) == (1, True)
    status = running.status()
    assert status["models"]["m"]["fleet_hold_error"] is None, status["models"]["m"]["fleet_hold_error"]
    assert healthy(status)
    assert "could not be named the stable version" not in caplog.text


def test_ten_new_holds_while_the_lock_is_stuck_wait_once(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docs promise one 0.5 s wait per try however many models hold a version back."""
    models = [f"m{i}" for i in range(10)]
    for model in models:
        _drop_into(repository, model, 1, compatible=True)
    running = make_server(repository, poll_interval_s=None, control_interval_s=None)
    for model in models:
        _drop_into(repository, model, 2, compatible=False)
    waited = lock_waits(monkeypatch)
    with ControlFile(repository)._locked():
        start = time.monotonic()
        running.refresh()
        assert time.monotonic() - start < 2.0
        assert all(running.status()["models"][m]["fleet_hold_error"] for m in models)
        running.refresh()
    assert waited == [0.5, 0.0], waited
    running.refresh()
    assert {ControlFile(repository).read().models[m].stable for m in models} == {1}


def test_a_poll_while_the_named_version_s_folder_is_copied_again_leaves_status_healthy(
    repository: Path, make_server: ServerFactory
) -> None:
    """``rm -rf models/m/1 && cp -r release/m/1 models/m/1`` with a poll between the two: the gate's name is kept
    (the folder is likely back at once) and nothing is logged, yet status's ``control.error`` said the fleet's
    version 1 is served from memory ("put it back, or switch the fleet"), and ``python -m inprocserve status``
    exited 1, failing the deploy's check. Now the version the gate named is no control error while its folder
    settles, nor once its removal is due (a failed removal shows as the model's ``fleet_hold_error``)."""
    clock = ManualClock()
    running = _gate_named_with_a_clock(repository, make_server, clock)
    release = repository.parent / "release-1"
    shutil.copytree(repository / "m" / "1", release)
    shutil.rmtree(repository / "m" / "1")
    running._registry.refresh(settle_empty_configs=True)  # a poll between the two
    status = running.status()
    assert control_error(status) is None, control_error(status)
    assert healthy(status)
    shutil.copytree(release, repository / "m" / "1")
    clock.advance(5.0)
    running._registry.refresh(settle_empty_configs=True)
    assert healthy(running.status())

    shutil.rmtree(repository / "m" / "1")  # removed for good, the control file's lock stuck: one error to act on
    running._registry.refresh(settle_empty_configs=True)
    clock.advance(2.0)
    with ControlFile(repository)._locked():
        running._registry.refresh(settle_empty_configs=True)
    status = running.status()
    assert status["models"]["m"]["fleet_hold_error"] is not None
    assert control_error(status) is None, control_error(status)
    running._registry.refresh(settle_empty_configs=True)
    assert _stable(repository) == (None, False)
    assert healthy(running.status())


def test_a_sibling_s_slow_writes_of_two_names_cost_one_wait(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two models each hold a version back; a sibling writes both names, each write holding the lock past this
    worker's wait. Each of this worker's waits that ran out found its name written, so none failed, and the next
    model's first try waited again: one wait per model (10 s for 20 models), where the docs promise one per try.
    Now after a wait that ran out the rest of the try takes the lock only if free."""
    for model in ("m", "n"):
        _drop_into(repository, model, 1, compatible=True)
    running = make_server(repository, poll_interval_s=None, control_interval_s=None)
    for model in ("m", "n"):
        _drop_into(repository, model, 2, compatible=False)
    sibling = ControlFile(repository)
    locked = threading.Event()

    def name(model: str) -> None:
        control = sibling.read()
        named = dataclasses.replace(ModelControl(), stable=1, stable_by_gate=1)
        sibling._write(
            dataclasses.replace(control, revision=control.revision + 1, models={**control.models, model: named})
        )

    def slow_writes() -> None:
        with sibling._locked():
            locked.set()
            time.sleep(0.25)
            name("m")
            time.sleep(0.5)  # (this worker's wait for m's name ran out meanwhile: it tries n's)
            name("n")
            time.sleep(0.6)

    waited = lock_waits(monkeypatch)
    writer = threading.Thread(target=slow_writes)
    writer.start()
    locked.wait(5)
    running.refresh()
    writer.join(5)
    assert waited.count(0.5) <= 1, waited
    assert running.status()["models"]["m"]["fleet_hold_error"] is None
    running.refresh()
    assert running.status()["models"]["n"]["fleet_hold_error"] is None
    assert {model: state.stable for model, state in ControlFile(repository).read().models.items()} == {"m": 1, "n": 1}
