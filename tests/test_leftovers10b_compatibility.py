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


def test_with_a_stable_flag_set_switch_judges_against_the_flags_version_and_status_says_which_it_judges_by(
    repository: Path, make_server: ServerFactory
) -> None:
    # The flag sends every request to version 2 (input renamed); version 1 is the configured stable version and
    # answers nobody. switch() judges against what requests get, version 2: to 2 is accepted, to 3 (version 1's
    # signature) refused, as its callers would break once the flag is cleared. status() never calls the flag
    # provider: it judges against its answering_version, the configured one (docs/repository.md).
    server, _ = flagged_to_version_2(repository, make_server, third_input="x")
    shown = server.status()["models"]["m"]
    assert shown["answering_version"] == 1
    assert (shown["versions"]["2"]["compatible"], shown["versions"]["3"]["compatible"]) == (False, True)
    with pytest.raises(inprocserve.PromotionRefusedError, match="not compatible with version 2"):
        server.switch("m", 3)
    server.switch("m", 2)  # the version every request gets already: nothing breaks
    assert server.predict("m", {"features": np.ones((1, DIMS[0]), np.float32)}).version == 2


def flagged_to_version_2(
    repository: Path, make_server: ServerFactory, *, third_input: str
) -> tuple[inprocserve.Server, inprocserve.InMemoryFlags]:
    """Versions 1 (input ``x``, the configured stable version), 2 (input ``features``) and 3 (input
    ``third_input``, version 2's weights), and a ``m.stable = 2`` flag that sends every request to version 2."""
    save_model(build_mlp_model(DIMS, input_name="x"), repository, "m", 1)
    save_model(build_mlp_model(DIMS, seed=1, input_name="features"), repository, "m", 2)
    save_model(build_mlp_model(DIMS, seed=1, input_name=third_input), repository, "m", 3)
    config = ModelConfig(version_policy=VersionPolicy.all(), rollout=RolloutConfig(stable=1))
    flags = inprocserve.InMemoryFlags({"m.stable": 2})
    server = make_server(
        repository, config=config, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, control_interval_s=None
    )
    return server, flags
