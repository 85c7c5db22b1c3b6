"""A failing flag service after the stable flag moved everyone to a new version (docs/rollouts.md, step 6):
whatever fails (the provider raising, hanging, busy, or a typo in another flag), the version the stable flag
last named answers, not the configuration's older one; counted, logged once, and shown in status()."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import CanaryConfig
from inprocserve._rollout import _STABLE_READS_AGREED

from .conftest import ServerFactory, rollout

X = np.ones((1, 4), np.float32)
CANARY = {"strategy": "canary", "stable": 1, "canary": CanaryConfig(version=2)}


def _promoted(server: inprocserve.Server, version: int = 2) -> None:
    """The stable flag read by as many requests as a failure's fallback needs to trust it (a flag read per
    request may target: its last reads must agree, ``_rollout._STABLE_READS_AGREED``)."""
    for i in range(_STABLE_READS_AGREED):
        assert server.predict("scale", X, context={"user_id": f"w{i}"}).version == version


class _Service:
    """A flag service a test breaks at will: it answers ``values`` until ``mode`` says otherwise."""

    name = "service"

    def __init__(self, values: Mapping[str, Any], *, blocking: bool) -> None:
        self.values = dict(values)
        self.blocking = blocking
        self.mode = "up"
        self.release = threading.Event()  # ends a hang (the test's clean-up sets it)
        self.calls = 0

    def _get(self, key: str, default: Any) -> Any:
        self.calls += 1
        if self.mode == "raise":
            raise ConnectionError("flag service unreachable")
        if self.mode == "hang":
            self.release.wait(30)
        return self.values.get(key, default)

    def get_boolean(self, key: str, default: bool, context: Mapping[str, Any]) -> bool:
        return self._get(key, default)  # type: ignore[no-any-return]

    def get_number(self, key: str, default: float, context: Mapping[str, Any]) -> float:
        return self._get(key, default)  # type: ignore[no-any-return]

    def get_string(self, key: str, default: str, context: Mapping[str, Any]) -> str:
        return self._get(key, default)  # type: ignore[no-any-return]

    def get_object(self, key: str, default: Any, context: Mapping[str, Any]) -> Any:
        return self._get(key, default)


@pytest.fixture
def service() -> Iterator[_Service]:
    made = _Service({"scale.stable": 2, "scale.canary.percent": 0}, blocking=True)
    yield made
    made.release.set()


@pytest.mark.parametrize(
    ("mode", "counter", "said"),
    [
        ("raise", "failures", "flag provider 'service' failed: ConnectionError"),
        ("hang", "timeouts", "flag provider 'service' took longer than 0.05s"),
        ("typo", "unusable", "'scale.canary.percent' must be a number, got 'ten'"),
    ],
)
def test_a_failing_flag_service_keeps_the_version_the_stable_flag_named(
    versions: Path,
    make_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
    service: _Service,
    mode: str,
    counter: str,
    said: str,
) -> None:
    server = make_server(versions, flags=service, flag_timeout_s=0.05, config=rollout(**CANARY))
    promoted = server.predict("scale", X, context={"user_id": "u0"})
    assert (promoted.version, promoted.variant) == (2, "stable")
    _promoted(server)
    if mode == "typo":
        service.values["scale.canary.percent"] = "ten"
    else:
        service.mode = mode
    answers = []
    with caplog.at_level("WARNING", logger="inprocserve"):
        for i in range(12):  # (a hang: both workers stuck, then the rest answered at once, as busy)
            started = time.monotonic()
            result = server.predict("scale", X, context={"user_id": f"u{i}"})
            answers.append((result.version, result.variant, time.monotonic() - started))
    assert {(version, variant) for version, variant, _ in answers} == {(2, "stable")}, answers
    assert max(took for _, _, took in answers) < 5.0  # (the budget, 0.05 s, plus a loaded host's slack)
    flags = server.status()["models"]["scale"]["rollout"]["flags"]
    counted = flags["failures"] + flags["timeouts"] + flags["busy"] + flags["unusable"]
    assert counted == 12 and flags[counter] >= 1, flags
    assert flags["workers"] <= 2, flags
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("inprocserve")]
    assert sum(said in m for m in logged) == 1, logged  # once, not per request
    assert len(logged) <= 2, logged  # (a hang: the timeout, then the busy workers)


def test_a_failing_flag_service_under_the_kill_switch_keeps_the_stable_flags_version(
    versions: Path, make_server: ServerFactory, service: _Service
) -> None:
    # The control file's kill switch reads the stable flag too (see Router.decide): a provider failing there
    # gave the configuration's version.
    server = make_server(versions, flags=service, flag_timeout_s=0.05, config=rollout(**CANARY))
    assert server.predict("scale", X, context={"user_id": "u0"}).version == 2
    server.kill("scale")
    _promoted(server)
    service.mode = "raise"
    result = server.predict("scale", X, context={"user_id": "u1"})
    assert (result.version, result.variant) == (2, "stable"), result.reason


def test_a_failing_flag_service_keeps_the_stable_flags_last_good_value(
    versions: Path, make_server: ServerFactory, service: _Service
) -> None:
    server = make_server(versions, flags=service, flag_timeout_s=10.0, config=rollout(**CANARY))
    assert server.predict("scale", X, context={"user_id": "u0"}).version == 2
    service.values["scale.stable"] = 9  # its own value unusable: the configured version, as before
    result = server.predict("scale", X, context={"user_id": "u0"})
    assert result.version == 1 and "names version 9" in result.reason, result.reason
    service.mode = "raise"
    assert server.predict("scale", X, context={"user_id": "u0"}).version == 1
    service.mode = "up"
    service.values["scale.stable"] = 3  # a good value again: it answers, and is what failures keep
    _promoted(server, 3)
    service.mode = "raise"
    assert server.predict("scale", X, context={"user_id": "u0"}).version == 3


def test_a_deleted_stable_flag_hands_back_to_the_configured_version(
    versions: Path, make_server: ServerFactory, service: _Service
) -> None:
    server = make_server(versions, flags=service, flag_timeout_s=10.0, config=rollout(**CANARY))
    _promoted(server)
    service.mode = "raise"
    assert server.predict("scale", X, context={"user_id": "u0"}).version == 2
    service.mode = "up"
    del service.values["scale.stable"]  # deleted: the configured stable version, and failures keep it
    assert server.predict("scale", X, context={"user_id": "u0"}).version == 1
    service.mode = "raise"
    assert server.predict("scale", X, context={"user_id": "u0"}).version == 1


@pytest.mark.parametrize("blocking", [False, True])
def test_a_plan_made_from_remembered_flags_keeps_the_stable_flags_version(
    versions: Path, make_server: ServerFactory, blocking: bool
) -> None:
    # InMemoryFlags decide from a plan (no read per request): the stable flag's version it holds is kept too.
    flags = inprocserve.InMemoryFlags({"scale.stable": 2})
    flags.blocking = blocking  # type: ignore[misc]
    server = make_server(versions, flags=flags, flag_timeout_s=10.0, config=rollout(**CANARY))
    assert server.predict("scale", X, context={"user_id": "u0"}).version == 2
    _promoted(server)  # (from a plan or read per request: its last reads must agree either way)
    flags.set("scale.strategy", "canery")
    result = server.predict("scale", X, context={"user_id": "u0"})
    assert result.version == 2 and "'scale.strategy' is 'canery'" in result.reason, result.reason
