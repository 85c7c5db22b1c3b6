"""status() and switch() judge a version's compatibility against the same version, with a ``<model>.stable``
flag set as without one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve import ModelConfig, RolloutConfig, VersionPolicy
from inprocserve.testing import build_mlp_model, save_model

from .conftest import VALUES_NOT_SPEED_S, ServerFactory

DIMS = (4, 8, 2)


def test_switch_refuses_what_status_shows_incompatible_while_a_stable_flag_is_set(
    repository: Path, make_server: ServerFactory
) -> None:
    # Version 2 renames the input callers send: status() shows it incompatible with version 1 (configured
    # stable), but switch() compared it with the stable flag's version, 2 itself, and moved the alias unasked.
    save_model(build_mlp_model(DIMS, input_name="x"), repository, "m", 1)
    save_model(build_mlp_model(DIMS, seed=1, input_name="features"), repository, "m", 2)
    save_model(build_mlp_model(DIMS, seed=2, input_name="x"), repository, "m", 3)
    config = ModelConfig(version_policy=VersionPolicy.all(), rollout=RolloutConfig(stable=1))
    flags = inprocserve.InMemoryFlags({"m.stable": 2})
    server = make_server(
        repository, config=config, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, control_interval_s=None
    )
    shown = server.status()["models"]["m"]
    assert (shown["versions"]["2"]["compatible"], shown["versions"]["3"]["compatible"]) == (False, True)
    with pytest.raises(inprocserve.PromotionRefusedError, match="not compatible with version 1"):
        server.switch("m", 2)
    server.switch("m", 3)  # shown compatible: switched without force
    assert server.predict("m", {"x": np.ones((1, DIMS[0]), np.float32)}, version=3).version == 3
