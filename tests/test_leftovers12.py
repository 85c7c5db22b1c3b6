"""Leftovers of the twelfth review: switch() reading the ``<model>.stable`` flag once, for its judgement and its
record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import inprocserve
from inprocserve import ModelConfig, RolloutConfig, VersionPolicy
from inprocserve.testing import build_mlp_model, save_model

from .conftest import VALUES_NOT_SPEED_S, ServerFactory
from .test_leftovers10b_compatibility import DIMS


class _StableChangingFlags(inprocserve.InMemoryFlags):
    """``m.stable`` is the next of ``answers`` on each read once armed (its last one from then on): the flag
    changed by an operator between two reads."""

    def __init__(self, answers: list[int]) -> None:
        super().__init__({"m.stable": answers[0]})
        self.answers: list[int] = []
        self._next = answers

    def arm(self) -> None:
        self.answers = list(self._next)

    def _lookup(self, key: str) -> Any:
        if key == "m.stable" and self.answers:
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return super()._lookup(key)

    def _frozen_values(self) -> None:  # (every read goes to _lookup)
        return None


def test_a_switch_records_as_its_previous_version_the_one_it_judged_compatibility_against(
    repository: Path, make_server: ServerFactory
) -> None:
    # The flag sends requests to version 2; version 3 has its signature (version 1, the configured stable one,
    # another). The flag is changed to 1 as switch("m", 3) runs: it judged 3 against 2 (compatible), then read
    # the flag again for the version to record as the one it switched from, 1, which it never judged, and which
    # rollback() returned to. It now reads the flag once: judged against 2, and records 2.
    save_model(build_mlp_model(DIMS, input_name="x"), repository, "m", 1)
    for version in (2, 3):
        save_model(build_mlp_model(DIMS, seed=version, input_name="features"), repository, "m", version)
    flags = _StableChangingFlags([2, 1])
    config = ModelConfig(version_policy=VersionPolicy.all(), rollout=RolloutConfig(stable=1))
    server = make_server(
        repository, config=config, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, control_interval_s=None
    )
    flags.arm()
    server.switch("m", 3)
    assert server.rollback("m") == 2
