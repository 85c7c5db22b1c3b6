"""The compatibility gate: a new version whose signature would break callers loads, is servable when
pinned, but never becomes the default by hot reload; an explicit, forced switch can still promote it."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve import ModelConfig, VersionPolicy
from inprocserve.testing import build_mlp_model, build_scale_model, save_model

from .conftest import ServerFactory, wait_until
from .test_telemetry import Otel
from .test_telemetry import otel as otel  # the fixture: one SDK per process

DIMS = (4, 8, 2)


def renamed(name: str, seed: int = 0) -> object:
    """The same MLP shape, with its input called ``name``."""
    return build_mlp_model(DIMS, seed=seed, input_name=name)


def rows(count: int = 1) -> np.ndarray:
    return np.ones((count, DIMS[0]), np.float32)


def test_an_incompatible_new_version_loads_but_the_old_one_stays_default(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(renamed("x"), repository, "m", 1)
    server = make_server(repository)
    assert server.predict("m", {"x": rows()}).version == 1
    save_model(renamed("features", seed=1), repository, "m", 2)
    assert server.refresh() == []
    # The old callers keep working on version 1; version 2 answers those who ask for it by number.
    assert server.predict("m", {"x": rows()}).version == 1
    assert server.predict("m", {"features": rows()}, version=2).version == 2
    assert server.models == {"m": [1, 2]}
    status = server.status()["models"]["m"]
    assert status["default_version"] == 1
    assert status["versions"]["1"]["compatible"] is True
    assert status["versions"]["2"]["compatible"] is False
    assert status["versions"]["2"]["serving"] is True
    problems = status["versions"]["2"]["incompatibilities"]
    assert any("'x' is gone" in p for p in problems) and any("'features' is new" in p for p in problems)


def test_a_version_unloaded_by_hand_then_made_stable_is_the_gate_s_baseline(
    repository: Path, make_server: ServerFactory
) -> None:
    """Switched to after its unload by hand, version 3 serves as the stable version only; the gate left it out
    as no policy choice, and an incompatible version 4 took the default, called compatible, with no log."""
    for version in (1, 2, 3):
        save_model(renamed("x", seed=version), repository, "m", version)
    server = make_server(repository, poll_interval_s=None)
    server.unload("m", 3)
    server.switch("m", 3)
    save_model(renamed("features", seed=9), repository, "m", 4)  # would break every caller sending "x"
    server.refresh()
    status = server.status()["models"]["m"]
    assert (status["answering_version"], status["default_version"]) == (3, 3)
    assert status["versions"]["4"]["compatible"] is False
    assert server.predict("m", {"x": rows()}).version == 3


def test_the_gate_logs_and_counts_a_held_back_version_once(
    repository: Path, make_server: ServerFactory, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    save_model(renamed("x"), repository, "counted", 1)
    server = make_server(repository)
    save_model(renamed("features"), repository, "counted", 2)
    with caplog.at_level("WARNING", logger="inprocserve"):
        server.refresh()
        server.refresh()  # still held back: no second log line or count
    messages = [r.getMessage() for r in caplog.records if "not compatible" in r.getMessage()]
    assert len(messages) == 1 and "'x' is gone" in messages[0]
    points = [
        p
        for p in otel.metric_points("inprocserve.model.incompatible")
        if p.attributes["inprocserve.model.name"] == "counted"
    ]
    assert [(p.attributes["inprocserve.model.version"], p.value) for p in points] == [(2, 1)]


def test_switch_refuses_an_incompatible_version_unless_forced(repository: Path, make_server: ServerFactory) -> None:
    save_model(renamed("x"), repository, "m", 1)
    server = make_server(repository)
    save_model(renamed("features"), repository, "m", 2)
    server.refresh()
    with pytest.raises(inprocserve.PromotionRefusedError, match="input 'x' is gone") as caught:
        server.switch("m", 2)
    assert caught.value.report["incompatibilities"] and caught.value.version == 2
    assert server.predict("m", {"x": rows()}).version == 1
    server.switch("m", 2, force=True)
    assert server.predict("m", {"features": rows()}).version == 2
    assert server.status()["models"]["m"]["versions"]["2"]["compatible"] is True
    # The forced version is now the baseline. Version 1 stays loaded, past the latest policy, as the one a
    # rollback goes to (the control file records it as the previous stable), but takes no default traffic.
    server.refresh()
    assert server.models == {"m": [1, 2]}
    assert server.predict("m", {"features": rows()}).version == 2
    # Switching back to version 1 is incompatible the other way round.
    with pytest.raises(inprocserve.PromotionRefusedError, match="input 'features' is gone"):
        server.switch("m", 1)


def test_a_compatible_newer_version_replaces_both(repository: Path, make_server: ServerFactory) -> None:
    save_model(renamed("x"), repository, "m", 1)
    server = make_server(repository)
    save_model(renamed("features"), repository, "m", 2)
    server.refresh()
    save_model(renamed("x", seed=3), repository, "m", 3)
    server.refresh()
    assert server.predict("m", {"x": rows()}).version == 3
    # The refresh named 3 the fleet's stable version in place of 1 (the gate's name, followed at once by the
    # worker that wrote it, as a switch is): 2, held back, is retired at the next poll, and 1, recorded as the
    # version to roll back to, stays loaded, as after a switch.
    server.refresh()
    assert server.models == {"m": [1, 3]}


def test_a_compatible_change_of_weights_and_dynamic_axes_takes_over(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    save_model(build_scale_model(3.0), repository, "scale", 2)
    server.refresh()
    assert server.predict("scale", np.ones((1, 4), np.float32)).version == 2
    assert server.status()["models"]["scale"]["versions"]["2"]["incompatibilities"] == []


def test_a_changed_fixed_dimension_is_held_back(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(1.0, features=4), repository, "scale", 1)
    server = make_server(repository)
    save_model(build_scale_model(1.0, features=5), repository, "scale", 2)
    server.refresh()
    assert server.predict("scale", np.ones((1, 4), np.float32)).version == 1
    problems = server.status()["models"]["scale"]["versions"]["2"]["incompatibilities"]
    assert problems == ["input 'x': axis 1 was 4, is 5", "output 'y': axis 1 was 4, is 5"]


def test_the_gate_holds_back_explicit_loads_too(tmp_path: Path, make_server: ServerFactory) -> None:
    first = save_model(renamed("x"), tmp_path, "m", 1)
    second = save_model(renamed("features"), tmp_path, "m", 2)
    server = make_server()
    server.load("m", path=first)
    assert server.load("m", path=second) == 2
    assert server.predict("m", {"x": rows()}).version == 1
    assert server.status()["models"]["m"]["versions"]["2"]["compatible"] is False


def test_with_the_old_version_gone_from_disk_the_new_one_serves(repository: Path, make_server: ServerFactory) -> None:
    save_model(renamed("x"), repository, "m", 1)
    server = make_server(repository, config=ModelConfig(version_policy=VersionPolicy.all()))
    save_model(renamed("features"), repository, "m", 2)
    server.refresh()
    assert server.predict("m", {"x": rows()}).version == 1
    import shutil

    shutil.rmtree(repository / "m" / "1")
    server.refresh()
    # Version 1 was the fleet's stable version by the gate's name alone (written when 2 was held back): gone
    # from disk, it holds nothing (a worker that starts cannot load it), so the name is removed and the worker,
    # which follows its own write at once, serves 2, as before the fleet hold.
    assert server.predict("m", {"features": rows()}).version == 2


def test_hot_reload_under_load_with_incompatible_versions(repository: Path, make_server: ServerFactory) -> None:
    """Callers that send ``x`` never see an error while incompatible versions come and go. The first hold names
    version 1 the fleet's stable version, and each compatible version after it is named in its place: the
    server follows the control file (as its watcher does each interval) before each check."""
    save_model(renamed("x"), repository, "m", 1)
    server = make_server(repository, control_interval_s=None)
    expected = {1: server.predict("m", {"x": rows()})["y"]}
    stop = threading.Event()
    errors: list[BaseException] = []
    answered = [0]

    def caller() -> None:
        while not stop.is_set() and answered[0] < 100_000:
            try:
                result = server.predict("m", {"x": rows()}, timeout_s=10)
                if result.version in expected:
                    np.testing.assert_allclose(result["y"], expected[result.version], rtol=1e-6)
                answered[0] += 1
            except BaseException as exc:  # every error fails the test
                errors.append(exc)
                return

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for number in range(2, 8):
            if number % 2:  # odd: compatible (takes over)
                save_model(renamed("x", seed=number), repository, "m", number)
            else:
                save_model(renamed("features", seed=number), repository, "m", number)
            server.refresh()
            server.sync_control()
            if number % 2:
                expected[number] = server.predict("m", {"x": rows()}, version=number)["y"]
                assert server.status()["models"]["m"]["default_version"] == number
            else:
                assert server.status()["models"]["m"]["default_version"] == number - 1
        wait_until(lambda: answered[0] > 50 or bool(errors))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not errors, errors[:3]
    assert server.predict("m", {"x": rows()}).version == 7


def test_guarded_promotion_refuses_an_incompatible_version(repository: Path, make_server: ServerFactory) -> None:
    save_model(renamed("x"), repository, "m", 1)
    server = make_server(repository)
    server.predict("m", {"x": rows()})  # a recent input to compare on
    save_model(renamed("features"), repository, "m", 2)
    server.refresh()
    with pytest.raises(inprocserve.PromotionRefusedError, match="input 'x' is gone") as caught:
        server.promote("m", 2)
    assert caught.value.report["incompatibilities"]
    assert server.predict("m", {"x": rows()}).version == 1


# -- the comparison itself ------------------------------------------------------------------------------------


def _sig(inputs: dict[str, tuple[str, object]], outputs: dict[str, tuple[str, object]]) -> object:
    from inprocserve._signature import _ONNX_TO_NUMPY, Signature, TensorSpec

    def specs(table: dict[str, tuple[str, object]]) -> list[TensorSpec]:
        return [
            TensorSpec(name, kind, _ONNX_TO_NUMPY.get(kind), None if shape is None else tuple(shape))  # type: ignore[arg-type]
            for name, (kind, shape) in table.items()
        ]

    return Signature(specs(inputs), specs(outputs))


F, D, I64 = "tensor(float)", "tensor(double)", "tensor(int64)"
OUT = {"y": (F, ["batch", 2])}


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (({"x": (F, ["batch", 4])}, OUT), ({"x": (F, ["n", 4])}, OUT), []),  # a renamed symbol is fine
        (({"x": (F, ["batch", 4])}, OUT), ({"x": (F, ["batch", None])}, OUT), []),  # fixed -> dynamic input
        (({"x": (F, ["batch", 4])}, OUT), ({"x": (F, ["batch", 4])}, {**OUT, "z": (F, ["batch"])}), []),
        (({"x": (F, ["batch", 4])}, {"y": (F, ["batch", None])}), ({"x": (F, ["batch", 4])}, OUT), []),
        (({"x": (F, None)}, OUT), ({"x": (F, ["batch", 9])}, OUT), []),  # unknown rank: not compared
        (
            ({"x": (F, ["batch", 4])}, OUT),
            ({"x": (D, ["batch", 4])}, OUT),
            ["input 'x': type tensor(float) became tensor(double)"],
        ),
        (
            ({"x": (F, ["batch", 4])}, OUT),
            ({"x": (F, ["batch", 4, 1])}, OUT),
            ["input 'x': rank 2 [batch, 4] became 3 [batch, 4, 1]"],
        ),
        (
            ({"x": (F, ["batch", None])}, OUT),
            ({"x": (F, ["batch", 4])}, OUT),
            ["input 'x': axis 1 was dynamic, is 4"],
        ),
        (
            ({"x": (F, ["batch", 4])}, OUT),
            ({"x": (F, ["batch", 4])}, {"y": (F, ["batch", None])}),
            ["output 'y': axis 1 was 2, is dynamic"],
        ),
        (
            ({"x": (F, ["batch", 4])}, OUT),
            ({"x": (F, ["batch", 4])}, {"z": (F, ["batch", 2])}),
            ["output 'y' is gone (serving produces y: tensor(float) [batch, 2])"],
        ),
        (
            ({"x": (F, ["batch", 4])}, OUT),
            ({"x": (F, ["batch", 4]), "n": (I64, ["batch"])}, OUT),
            ["input 'n' is new (n: tensor(int64) [batch]); callers do not send it"],
        ),
    ],
    ids=[
        "symbol-renamed",
        "input-fixed-to-dynamic",
        "output-added",
        "output-dynamic-to-fixed",
        "unknown-rank",
        "input-dtype",
        "input-rank",
        "input-dynamic-to-fixed",
        "output-fixed-to-dynamic",
        "output-gone",
        "input-added",
    ],
)
def test_incompatibilities(before: tuple[dict, dict], after: tuple[dict, dict], expected: list[str]) -> None:
    from inprocserve._signature import incompatibilities

    assert incompatibilities(_sig(*before), _sig(*after)) == expected  # type: ignore[arg-type]
