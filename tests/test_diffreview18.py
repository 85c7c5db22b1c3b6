"""diffreview18: the day's last commits of main, read against what they claim."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inprocserve.testing import build_mlp_model, save_model

from .conftest import ServerFactory


def test_a_worker_that_starts_with_the_stable_version_named_in_config_toml_holds_the_new_one_back(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/repository.md, "Name the stable version before deploying an incompatible one": with
    ``[rollout] stable = 1`` in the model's config.toml, every worker, running or starting, holds an incompatible
    version 2 back (the hold's warning names this as the way to hold the fleet)."""
    x = np.ones((1, 4), np.float32)
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    (repository / "m" / "config.toml").write_text("[rollout]\nstable = 1\n")
    running = make_server(repository, poll_interval_s=None)
    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 2)
    running.refresh()
    assert running.predict("m", {"x": x}).version == 1
    with caplog.at_level("WARNING", logger="inprocserve"):
        started = make_server(repository, poll_interval_s=None)
    assert started.status()["models"]["m"]["answering_version"] == 1
    assert started.predict("m", {"x": x}).version == 1
    assert started.predict("m", {"features": x}, version=2).version == 2


def test_naming_the_stable_version_in_config_toml_after_the_hold_holds_every_worker(
    repository: Path, make_server: ServerFactory
) -> None:
    """The hold's warning's way out, taken after the fact: version 2 (incompatible) appeared with no stable
    version named, one worker holds it back and one started since serves it; then ``[rollout] stable = 1`` is
    written to config.toml. "From then on every worker, running or starting, holds the new version back"."""
    x = np.ones((1, 4), np.float32)
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    running = make_server(repository, poll_interval_s=None)
    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 2)
    running.refresh()
    started = make_server(repository, poll_interval_s=None)
    assert (
        running.status()["models"]["m"]["answering_version"],
        started.status()["models"]["m"]["answering_version"],
    ) == (1, 2)

    (repository / "m" / "config.toml").write_text("[rollout]\nstable = 1\n")
    running.refresh()
    started.refresh()
    later = make_server(repository, poll_interval_s=None)
    answering = [w.status()["models"]["m"]["answering_version"] for w in (running, started, later)]
    assert answering == [1, 1, 1]
    assert [w.predict("m", {"x": x}).version for w in (running, started, later)] == [1, 1, 1]
