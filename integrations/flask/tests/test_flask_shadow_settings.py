"""The shadow settings (``INPROCSERVE_SHADOW_*``, ``INPROCSERVE_ON_SHADOW``) reach each worker's Server, and bad
values fail at ``init_app``, not in the first request of every worker."""

from __future__ import annotations

import inspect
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from inprocserve_flask import Inprocserve, predict, server

import inprocserve
from inprocserve import ModelConfig, RolloutConfig, ShadowComparison, ShadowConfig, VersionPolicy
from inprocserve.testing import build_scale_model, save_model

SHADOWED = ModelConfig(  # version 1 answers, version 2 gets a shadow copy of every request
    rollout=RolloutConfig(stable=1, shadow=ShadowConfig(versions=(2,))), version_policy=VersionPolicy.all()
)
ROW = {"rows": [[1.0, 2.0, 3.0, 4.0]]}  # 16 bytes of input and 16 of answer: a 32-byte shadow copy


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    for version in (1, 2):
        save_model(build_scale_model(float(version)), folder, "scale", version)  # y = x * version
    return folder


@pytest.fixture
def make_app(repository: Path) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def make(**config: Any) -> Flask:
        app = Flask(__name__)
        app.config.update(INPROCSERVE_REPOSITORY=str(repository), INPROCSERVE_MODEL_CONFIG=SHADOWED, **config)
        Inprocserve(app)
        apps.append(app)

        @app.post("/score")
        def score() -> Any:
            return {"version": predict("scale", {"x": request.get_json()["rows"]}).version}

        return app

    yield make
    for app in apps:
        Inprocserve.close(app)


def shadow_stats(app: Flask) -> dict[str, Any]:
    with app.app_context():
        stats: dict[str, Any] = server.status()["models"]["scale"]["shadow"].get("2", {})
    return stats


def score(app: Flask, times: int) -> None:
    client = app.test_client()
    for _ in range(times):
        response = client.post("/score", json=ROW)
        assert response.status_code == 200 and response.json == {"version": 1}


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.001)


class HeldShadowThread:
    """An ``on_shadow`` callback that holds the shadow thread in the first comparison until released."""

    def __init__(self) -> None:
        self.comparisons: list[ShadowComparison] = []
        self.stuck = threading.Event()
        self.released = threading.Event()

    def __call__(self, comparison: ShadowComparison) -> None:
        self.comparisons.append(comparison)
        self.stuck.set()
        self.released.wait(60)


def test_the_shadow_defaults_are_the_server_s(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    parameters = inspect.signature(inprocserve.Server).parameters
    for key, argument in [
        ("INPROCSERVE_SHADOW_BUDGET", "shadow_budget"),
        ("INPROCSERVE_SHADOW_QUEUE", "shadow_queue"),
        ("INPROCSERVE_SHADOW_QUEUE_BYTES", "shadow_queue_bytes"),
        ("INPROCSERVE_ON_SHADOW", "on_shadow"),
    ]:
        assert app.config[key] == parameters[argument].default, key


def test_the_shadow_settings_are_the_server_s(make_app: Callable[..., Flask]) -> None:
    comparisons: list[ShadowComparison] = []
    app = make_app(
        INPROCSERVE_SHADOW_BUDGET=0.5,
        INPROCSERVE_SHADOW_QUEUE=7,
        INPROCSERVE_SHADOW_QUEUE_BYTES=4096,
        INPROCSERVE_ON_SHADOW=comparisons.append,
    )
    with app.app_context():
        runner = server._shadow  # (private: what the status does not show)
    assert (runner.budget, runner.max_queued, runner.max_queued_bytes) == (0.5, 7, 4096)
    assert runner.on_result == comparisons.append


def test_on_shadow_gets_a_comparison_of_every_request_under_a_full_budget(make_app: Callable[..., Flask]) -> None:
    comparisons: list[ShadowComparison] = []
    app = make_app(INPROCSERVE_SHADOW_BUDGET=1.0, INPROCSERVE_ON_SHADOW=comparisons.append)
    score(app, 20)
    wait_until(lambda: len(comparisons) == 20)
    assert {(c.primary_version, c.shadow_version, c.max_abs_diff, c.error) for c in comparisons} == {(1, 2, 4.0, None)}
    assert shadow_stats(app)["dropped_over_budget"] == 0


def test_a_tiny_shadow_budget_drops_the_copies_after_the_first(make_app: Callable[..., Flask]) -> None:
    app = make_app(INPROCSERVE_SHADOW_BUDGET=1e-6)  # a microsecond a second: the first run spends it for long
    score(app, 20)
    wait_until(lambda: shadow_stats(app).get("runs", 0) + shadow_stats(app).get("dropped_over_budget", 0) == 20)
    assert shadow_stats(app)["runs"] == 1 and shadow_stats(app)["dropped_over_budget"] == 19


def test_the_shadow_queue_setting_bounds_the_copies_waiting(make_app: Callable[..., Flask]) -> None:
    held = HeldShadowThread()
    app = make_app(INPROCSERVE_SHADOW_BUDGET=1.0, INPROCSERVE_SHADOW_QUEUE=1, INPROCSERVE_ON_SHADOW=held)
    try:
        score(app, 1)
        assert held.stuck.wait(30)  # the shadow thread is held in the first comparison
        score(app, 3)  # one copy waits, two find the queue of one full
        assert shadow_stats(app)["dropped_queue_full"] == 2
    finally:
        held.released.set()
    wait_until(lambda: len(held.comparisons) == 2)


def test_the_shadow_queue_bytes_setting_bounds_the_size_of_a_copy(make_app: Callable[..., Flask]) -> None:
    app = make_app(INPROCSERVE_SHADOW_BUDGET=1.0, INPROCSERVE_SHADOW_QUEUE_BYTES=64)  # a copy over 16 bytes: none
    score(app, 3)
    stats = shadow_stats(app)
    assert stats["dropped_too_large"] == 3 and stats.get("runs", 0) == 0


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("INPROCSERVE_SHADOW_BUDGET", 0, r"INPROCSERVE_SHADOW_BUDGET must be a share of time in \(0, 1\], got 0"),
        ("INPROCSERVE_SHADOW_BUDGET", 1.5, r"INPROCSERVE_SHADOW_BUDGET must be a share of time in \(0, 1\]"),
        ("INPROCSERVE_SHADOW_BUDGET", "0.5", r"INPROCSERVE_SHADOW_BUDGET must be a share of time in \(0, 1\]"),
        ("INPROCSERVE_SHADOW_BUDGET", math.nan, r"INPROCSERVE_SHADOW_BUDGET must be a share of time in \(0, 1\]"),
        ("INPROCSERVE_SHADOW_BUDGET", True, r"INPROCSERVE_SHADOW_BUDGET must be a share of time in \(0, 1\]"),
        ("INPROCSERVE_SHADOW_QUEUE", 0, r"INPROCSERVE_SHADOW_QUEUE must be >= 1 and <= \d+ \(an integer\), got 0"),
        ("INPROCSERVE_SHADOW_QUEUE", 2.5, r"INPROCSERVE_SHADOW_QUEUE must be >= 1 and <= \d+ \(an integer\)"),
        ("INPROCSERVE_SHADOW_QUEUE", 2**40, r"INPROCSERVE_SHADOW_QUEUE must be >= 1 and <= \d+ \(an integer\)"),
        ("INPROCSERVE_SHADOW_QUEUE_BYTES", 0, r"INPROCSERVE_SHADOW_QUEUE_BYTES must be >= 1 \(an integer\), got 0"),
        ("INPROCSERVE_SHADOW_QUEUE_BYTES", "32MiB", r"INPROCSERVE_SHADOW_QUEUE_BYTES must be >= 1 \(an integer\)"),
        ("INPROCSERVE_ON_SHADOW", 42, r"INPROCSERVE_ON_SHADOW must be a callable or None, got 42"),
        ("INPROCSERVE_ON_SHADOW", "app.shadows.record", r"INPROCSERVE_ON_SHADOW must be a callable"),
    ],
)
def test_a_bad_shadow_setting_fails_at_init_app(
    make_app: Callable[..., Flask], key: str, value: object, message: str
) -> None:
    with pytest.raises(inprocserve.ConfigurationError, match=message):
        make_app(**{key: value})
