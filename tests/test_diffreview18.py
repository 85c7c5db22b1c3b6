"""diffreview18: the day's last commits of main, read against what they claim."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from inprocserve import CacheConfig, ModelConfig
from inprocserve._request import Request
from inprocserve._server import noting_routes, routed_version, stop_noting
from inprocserve.testing import build_mlp_model, save_model

from .conftest import (
    BUSY_WIDTH,
    ServerFactory,
    SessionHolder,
    build_busy_model,
    busy_inputs,
    version_status,
    wait_until,
)
from .test_batch_execution_interrupted import GeventLikeTimeout
from .test_loophard import BOUND_S


def test_a_worker_that_starts_with_the_stable_version_named_in_config_toml_holds_the_new_one_back(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/repository.md, "Compatibility gate" (a stable version named before an incompatible one): with
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
    version named, one worker holds it back and one started since serves it (it started before the hold was
    found, and follows no control file: the stable version the running one names there reaches it at its next
    read); then ``[rollout] stable = 1`` is written to config.toml. "From then on every worker, running or
    starting, holds the new version back"."""
    x = np.ones((1, 4), np.float32)
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    running = make_server(repository, poll_interval_s=None)
    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 2)
    started = make_server(repository, poll_interval_s=None, control_interval_s=None)
    running.refresh()
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


def test_an_off_loop_follower_interrupted_after_its_version_was_unloaded_names_the_version_it_was_queued_for(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An off-loop call (a thread reading its routed-version notes, as ``apredict``'s executor call does) whose
    request follows an identical one in flight on version 1; version 1 is unloaded (version 2 deployed) and the
    leader gives up at its deadline, so the follower is routed again to version 2 and queued there, and then a
    gevent ``Timeout`` lands while it waits. The note named version 1, where it was routed and queued for 2."""
    repository = busy_repository
    server = make_server(repository, config=ModelConfig(cache=CacheConfig(share_in_flight=True)), poll_interval_s=None)
    held = hold_session(server)
    x = busy_inputs(1, index=7)
    follower_thread: list[threading.Thread] = []
    wait = Request.wait
    waiting = threading.Event()

    def interrupted(self: Request, timeout_s: float | None) -> bool:
        if threading.current_thread() not in follower_thread:
            return wait(self, timeout_s)
        waiting.set()
        wait_until(lambda: self.route.version == 2, BOUND_S)  # (routed again by its leader's give-up)
        raise GeventLikeTimeout("stopped while it waited")

    monkeypatch.setattr(Request, "wait", interrupted)
    leader_error: list[BaseException] = []
    noted: list[int | None] = []

    def lead() -> None:
        try:
            server.predict("busy", x, timeout_s=1.0)
        except BaseException as exc:
            leader_error.append(exc)

    def follow() -> None:
        reader = noting_routes()
        try:
            server.predict("busy", x)
        except GeventLikeTimeout as exc:
            noted.append(routed_version(exc, None, reader))
        finally:
            stop_noting()

    leader = threading.Thread(target=lead)
    leader.start()
    wait_until(lambda: version_status(server, "busy")["queued_rows"] == 1)
    follower = threading.Thread(target=follow)
    follower_thread.append(follower)
    follower.start()
    assert waiting.wait(BOUND_S)  # (it follows the leader, still queued behind the held run)
    save_model(build_busy_model(BUSY_WIDTH), repository, "busy", 2)
    refresh = threading.Thread(target=server.refresh)  # (version 1 unloaded: it drains once the held run ends)
    refresh.start()
    leader.join(BOUND_S)
    follower.join(BOUND_S)
    held.let_go()
    refresh.join(BOUND_S)
    assert [type(e).__name__ for e in leader_error] == ["DeadlineExceededError"]
    assert noted == [2]
