"""``inprocserve.testing``: the helpers users' tests build on refuse what they cannot honour, with a
``ValueError`` that says what to pass instead, rather than writing or building something broken."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve.testing import (
    ManualClock,
    build_gather_model,
    build_mlp_model,
    build_scale_model,
    build_sum_model,
    save_model,
)

from .conftest import ServerFactory


@pytest.mark.parametrize("name", ["", "a/b", "../outside", ".hidden", "x" * 129])
def test_save_model_refuses_a_name_the_repository_would_not_serve(tmp_path: Path, name: str) -> None:
    repository = tmp_path / "models"
    repository.mkdir()
    with pytest.raises(ValueError, match="invalid model name"):
        save_model(build_scale_model(), repository, name)
    assert sorted(tmp_path.rglob("*.onnx")) == []


@pytest.mark.parametrize("version", [0, -1])
def test_save_model_refuses_a_version_below_one(repository: Path, version: int) -> None:
    with pytest.raises(ValueError, match="version must be >= 1"):
        save_model(build_scale_model(), repository, "scale", version)
    assert sorted(repository.rglob("*.onnx")) == []


def test_save_model_refuses_a_version_that_is_not_a_whole_number(repository: Path) -> None:
    with pytest.raises(TypeError, match="version must be a whole number"):
        save_model(build_scale_model(), repository, "scale", 1.5)  # type: ignore[arg-type]


def test_what_save_model_accepts_the_server_serves(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0), repository, "fraud-v2.model_a", 1)
    save_model(build_scale_model(3.0), repository, "fraud-v2.model_a", np.int64(12))  # type: ignore[arg-type]
    server = make_server(repository)
    assert server.models == {"fraud-v2.model_a": [12]}


def test_save_model_given_the_bytes_of_a_model_says_what_to_pass_and_makes_no_folder(repository: Path) -> None:
    # (model.SerializeToString(), or a file's bytes): an AttributeError from inside save_model, after it had
    # made an empty version folder <repository>/scale/1 that the repository then lists as a problem
    model = build_scale_model().SerializeToString()
    with pytest.raises(TypeError, match=r"onnx\.ModelProto.*onnx\.load_model_from_string"):
        save_model(model, repository, "scale")  # type: ignore[arg-type]
    assert sorted(repository.iterdir()) == []


@pytest.mark.parametrize("step", [-50.0, -1e-9, math.nan, math.inf, -math.inf])
def test_manual_clock_moves_forward_only_by_finite_steps(step: float) -> None:
    clock = ManualClock(start=10.0)
    with pytest.raises(ValueError, match="finite number of seconds >= 0"):
        clock.advance(step)
    assert clock() == 10.0
    clock.advance(0)
    clock.advance(2.5)
    assert clock() == 12.5


def test_manual_clock_never_reaches_infinity() -> None:
    # finite steps that add up past float's range made the clock infinite (every deadline then compares false,
    # what advance(math.inf) is refused for), and a start or step of a huge int was an OverflowError
    clock = ManualClock(start=1e308)
    with pytest.raises(ValueError, match="finite"):
        clock.advance(1e308)
    assert clock() == 1e308
    with pytest.raises(ValueError, match="finite"):
        ManualClock(start=10**400)
    with pytest.raises(ValueError, match="finite"):
        ManualClock().advance(10**400)


def test_manual_clock_refuses_a_non_finite_start() -> None:
    with pytest.raises(ValueError, match="finite"):
        ManualClock(start=math.nan)
    with pytest.raises(TypeError, match="number of seconds"):
        ManualClock().advance("1")  # type: ignore[arg-type]


def test_gather_model_counts_negative_indices_from_the_end(repository: Path, make_server: ServerFactory) -> None:
    """As its docstring says: -1 is the last row; only indices outside -rows..rows-1 fail in onnxruntime."""
    save_model(build_gather_model(table_rows=3, width=2), repository, "gather")
    server = make_server(repository)
    rows = server.predict("gather", {"index": np.array([-1, 0, -3], np.int64)})["rows"]
    assert rows.tolist() == [[4.0, 5.0], [0.0, 1.0], [0.0, 1.0]]
    for poisoned in (3, -4):
        with pytest.raises(inprocserve.InvalidInputError):
            server.predict("gather", {"index": np.array([poisoned], np.int64)})


@pytest.mark.parametrize("dims", [(), (16,), (16, 0, 2), (16, -4)])
def test_mlp_model_refuses_dims_it_cannot_build(dims: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="dims"):
        build_mlp_model(dims)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: build_scale_model(features=-3), "features"),
        (lambda: build_scale_model(features=0), "features"),
        (lambda: build_sum_model(features=0), "features"),
        (lambda: build_sum_model(fixed_batch=0), "fixed_batch"),
        (lambda: build_gather_model(table_rows=0), "table_rows"),
        (lambda: build_gather_model(width=-1), "width"),
    ],
)
def test_model_builders_refuse_sizes_below_one(build: object, field: str) -> None:
    assert callable(build)
    with pytest.raises(ValueError, match=f"{field} must be >= 1"):
        build()


def test_model_builders_refuse_sizes_that_are_not_whole_numbers() -> None:
    with pytest.raises(TypeError, match="features must be a whole number"):
        build_scale_model(features=True)
    with pytest.raises(TypeError, match="features must be a whole number"):
        build_scale_model(features=2.0)  # type: ignore[arg-type]


def test_save_model_over_a_saved_model_replaces_it_whole(repository: Path, make_server: ServerFactory) -> None:
    # It wrote model.onnx in place: a server polling the repository (or a thread of the test) that opened the
    # file as a new version was saved over it read it empty or half-written, and a repository copied with hard
    # links (cp -al, a snapshot) had its copy rewritten too. Now written aside and renamed over it.
    path = save_model(build_scale_model(2.0), repository, "scale", 1)
    old = path.read_bytes()
    snapshot = repository.parent / "snapshot.onnx"
    os.link(path, snapshot)
    with path.open("rb") as reading:  # opened just before the new model is saved
        save_model(build_scale_model(3.0, features=64), repository, "scale", 1)
        assert reading.read() == old  # the whole old model, not a mix of the two
    assert snapshot.read_bytes() == old
    assert [entry.name for entry in path.parent.iterdir()] == ["model.onnx"]  # no temporary file left
    server = make_server(repository)
    x = np.ones((2, 64), np.float32)
    np.testing.assert_array_equal(server.predict("scale", x)["y"], x * 3)


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
def test_save_model_over_an_existing_model_keeps_its_mode(repository: Path) -> None:
    # A model kept from other users (0600) was saved over with the umask's mode (0644): written aside and
    # renamed, the new file took the new file's mode, where the write in place had kept the old one's.
    path = save_model(build_scale_model(1.0), repository, "scale")
    path.chmod(0o600)
    assert save_model(build_scale_model(2.0), repository, "scale") == path
    assert path.stat().st_mode & 0o777 == 0o600
