"""The shadow settings (``SHADOW_BUDGET``, ``SHADOW_QUEUE``, ``SHADOW_QUEUE_BYTES``, ``ON_SHADOW``) reach each
worker's Server, and bad values are system check error inprocserve.E011."""

from __future__ import annotations

import inspect
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.core.checks import run_checks
from django.test import Client, override_settings
from inprocserve_django import get_server, reset_server
from inprocserve_django.conf import DEFAULTS

import inprocserve
from inprocserve import ModelConfig, RolloutConfig, ShadowComparison, ShadowConfig, VersionPolicy
from inprocserve.testing import build_scale_model, save_model

SHADOWED = ModelConfig(  # version 1 answers, version 2 gets a shadow copy of every request
    rollout=RolloutConfig(stable=1, shadow=ShadowConfig(versions=(2,))), version_policy=VersionPolicy.all()
)

RECORDED: list[ShadowComparison] = []
"""What :func:`record` got: the callback named by its dotted path."""


def record(comparison: ShadowComparison) -> None:
    RECORDED.append(comparison)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    for version in (1, 2):
        save_model(build_scale_model(float(version)), folder, "scale", version)  # y = x * version
    return folder


@pytest.fixture
def serving(repository: Path) -> Iterator[Callable[..., Any]]:
    """``serving(**settings)``: a context in which INPROCSERVE is the shadowed repository plus ``settings``."""

    @contextmanager
    def serve(**settings: Any) -> Iterator[None]:
        with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "CONFIG": SHADOWED, **settings}):
            try:
                yield
            finally:
                reset_server()

    yield serve
    reset_server()


def score(times: int) -> None:
    client = Client()
    for _ in range(times):
        body = json.dumps({"rows": [[1.0, 2.0, 3.0, 4.0]]})  # 16 bytes in, 16 out: a 32-byte shadow copy
        response = client.post("/score", data=body, content_type="application/json")
        assert response.status_code == 200 and response.json()["version"] == 1


def shadow_stats() -> dict[str, Any]:
    stats: dict[str, Any] = get_server().status()["models"]["scale"]["shadow"].get("2", {})
    return stats


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


def test_the_shadow_defaults_are_the_server_s() -> None:
    parameters = inspect.signature(inprocserve.Server).parameters
    for key, argument in [
        ("SHADOW_BUDGET", "shadow_budget"),
        ("SHADOW_QUEUE", "shadow_queue"),
        ("SHADOW_QUEUE_BYTES", "shadow_queue_bytes"),
        ("ON_SHADOW", "on_shadow"),
    ]:
        assert DEFAULTS[key] == parameters[argument].default, key


def test_the_shadow_settings_are_the_server_s(serving: Callable[..., Any]) -> None:
    with serving(SHADOW_BUDGET=0.5, SHADOW_QUEUE=7, SHADOW_QUEUE_BYTES=4096, ON_SHADOW=f"{__name__}.record"):
        runner = get_server()._shadow  # (private: what the status does not show)
        assert (runner.budget, runner.max_queued, runner.max_queued_bytes) == (0.5, 7, 4096)
        assert runner.on_result is record  # the dotted path, imported


@pytest.mark.parametrize("on_shadow", ["callable", "dotted path"])
def test_on_shadow_gets_a_comparison_of_every_request_under_a_full_budget(
    serving: Callable[..., Any], on_shadow: str
) -> None:
    RECORDED.clear()
    callback = record if on_shadow == "callable" else f"{__name__}.record"
    with serving(SHADOW_BUDGET=1.0, ON_SHADOW=callback):
        score(20)
        wait_until(lambda: len(RECORDED) == 20)
        assert {(c.primary_version, c.shadow_version, c.max_abs_diff, c.error) for c in RECORDED} == {(1, 2, 4.0, None)}
        assert shadow_stats()["dropped_over_budget"] == 0
    RECORDED.clear()


def test_a_tiny_shadow_budget_drops_the_copies_after_the_first(serving: Callable[..., Any]) -> None:
    with serving(SHADOW_BUDGET=1e-6):  # a microsecond a second: the first run spends it for long
        score(20)
        wait_until(lambda: shadow_stats().get("runs", 0) + shadow_stats().get("dropped_over_budget", 0) == 20)
        assert shadow_stats()["runs"] == 1 and shadow_stats()["dropped_over_budget"] == 19


def test_the_shadow_queue_setting_bounds_the_copies_waiting(serving: Callable[..., Any]) -> None:
    held = HeldShadowThread()
    with serving(SHADOW_BUDGET=1.0, SHADOW_QUEUE=1, ON_SHADOW=held):
        try:
            score(1)
            assert held.stuck.wait(30)  # the shadow thread is held in the first comparison
            score(3)  # one copy waits, two find the queue of one full
            assert shadow_stats()["dropped_queue_full"] == 2
        finally:
            held.released.set()
        wait_until(lambda: len(held.comparisons) == 2)


def test_the_shadow_queue_bytes_setting_bounds_the_size_of_a_copy(serving: Callable[..., Any]) -> None:
    with serving(SHADOW_BUDGET=1.0, SHADOW_QUEUE_BYTES=64):  # a copy over 16 bytes: none is made
        score(3)
        stats = shadow_stats()
        assert stats["dropped_too_large"] == 3 and stats.get("runs", 0) == 0


def check_errors(repository: Path, **settings: Any) -> list[Any]:
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), **settings}):
        return [message for message in run_checks() if message.id and message.id.startswith("inprocserve")]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("SHADOW_BUDGET", 0, r"^INPROCSERVE\['SHADOW_BUDGET'\] must be a share of time in \(0, 1\], got 0\.$"),
        ("SHADOW_BUDGET", 1.5, r"SHADOW_BUDGET'\] must be a share of time in \(0, 1\]"),
        ("SHADOW_BUDGET", "0.02", r"SHADOW_BUDGET'\] must be a share of time in \(0, 1\]"),
        ("SHADOW_BUDGET", math.nan, r"SHADOW_BUDGET'\] must be a share of time in \(0, 1\]"),
        ("SHADOW_BUDGET", True, r"SHADOW_BUDGET'\] must be a share of time in \(0, 1\]"),
        ("SHADOW_QUEUE", 0, r"^INPROCSERVE\['SHADOW_QUEUE'\] must be >= 1 and <= \d+ \(an integer\), got 0\.$"),
        ("SHADOW_QUEUE", 2.5, r"SHADOW_QUEUE'\] must be >= 1 and <= \d+ \(an integer\)"),
        ("SHADOW_QUEUE", 2**40, r"SHADOW_QUEUE'\] must be >= 1 and <= \d+ \(an integer\)"),
        ("SHADOW_QUEUE_BYTES", 0, r"^INPROCSERVE\['SHADOW_QUEUE_BYTES'\] must be >= 1 \(an integer\), got 0\.$"),
        ("SHADOW_QUEUE_BYTES", "32MiB", r"SHADOW_QUEUE_BYTES'\] must be >= 1 \(an integer\)"),
        ("ON_SHADOW", 42, r"^INPROCSERVE\['ON_SHADOW'\] is not a callable, a dotted path to one, or None, but 42\.$"),
        ("ON_SHADOW", "no_such_module.record", r"ON_SHADOW'\] is 'no_such_module.record', which does not import: "),
        ("ON_SHADOW", "inprocserve.no_such_name", r"which does not import: ImportError: .*no_such_name"),
        ("ON_SHADOW", "record", r"which does not import: ImportError: .*doesn't look like a module path"),
        ("ON_SHADOW", "inprocserve.__version__", r"is 'inprocserve.__version__', which is not callable but str"),
    ],
)
def test_a_bad_shadow_setting_is_check_error_e011(repository: Path, key: str, value: object, message: str) -> None:
    errors = check_errors(repository, **{key: value})
    assert [error.id for error in errors] == ["inprocserve.E011"]
    assert re.search(message, errors[0].msg), errors[0].msg
    assert errors[0].hint


def test_good_shadow_settings_pass_the_checks(repository: Path) -> None:
    good = {"SHADOW_BUDGET": 1, "SHADOW_QUEUE": 1, "SHADOW_QUEUE_BYTES": 2**40}
    assert check_errors(repository, **good, ON_SHADOW=record) == []
    assert check_errors(repository, **good, ON_SHADOW=f"{__name__}.record") == []
    assert check_errors(repository, ON_SHADOW=None) == []


def test_an_on_shadow_path_that_does_not_import_names_the_setting_where_no_check_ran(
    serving: Callable[..., Any],
) -> None:
    # gunicorn and uvicorn run no system checks: the worker's first build says which setting is wrong
    with serving(ON_SHADOW="myproject.shadows.record"):
        with pytest.raises(inprocserve.ConfigurationError, match=r"INPROCSERVE\['ON_SHADOW'\] is 'myproject"):
            get_server()
