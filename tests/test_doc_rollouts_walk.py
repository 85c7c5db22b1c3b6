"""docs/rollouts.md and docs/errors.md walked as a team running experiments does: the promises checked here
are those a walk of the pages found broken (each test says which sentence it holds the code to)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openfeature import api
from openfeature.provider.in_memory_provider import InMemoryProvider

import inprocserve
from inprocserve import CanaryConfig, InvalidInputError, ModelConfig, RolloutConfig
from inprocserve.testing import build_scale_model, save_model

X = {"x": np.ones((1, 4), np.float32)}
CANARY = ModelConfig(rollout=RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2, percent=10)))
DOMAIN = "inprocserve-doc-rollouts-walk"


@pytest.fixture
def fraud(tmp_path: Path) -> Path:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), tmp_path, "fraud", version)
    return tmp_path


@pytest.fixture
def open_feature() -> Iterator[inprocserve.OpenFeatureFlags]:
    api.set_provider_and_wait(InMemoryProvider({}), domain=DOMAIN)
    flags = inprocserve.OpenFeatureFlags(domain=DOMAIN)
    yield flags
    flags.close()
    api.clear_providers()


def provider_named(name: str, open_feature: inprocserve.OpenFeatureFlags) -> Any:
    if name == "openfeature-blocking":
        return inprocserve.OpenFeatureFlags(domain=DOMAIN, blocking=True)
    return {"none": None, "in-memory": inprocserve.InMemoryFlags({}), "openfeature": open_feature}[name]


@pytest.mark.parametrize("provider", ["none", "in-memory", "openfeature", "openfeature-blocking"])
@pytest.mark.parametrize(
    ("context", "says"),
    [
        ({"user_id": {"id": 1}}, "the targeting key ('user_id' or 'targeting_key' in the context) is a dict"),
        ({"user_id": 10**5000}, "the targeting key ('user_id' or 'targeting_key' in the context) cannot be made"),
    ],
)
def test_a_targeting_key_the_rollout_cannot_bucket_is_an_invalid_input_error_naming_the_model(
    fraud: Path, open_feature: inprocserve.OpenFeatureFlags, provider: str, context: dict[str, Any], says: str
) -> None:
    """rollouts.md: a collection or a key that cannot be made text "is the request's InvalidInputError";
    errors.md: every such error "carries the model and version it concerns", and an InvalidInputError's
    message "starts with the model". The flag code that finds it knows no model: the error named none, and a
    caller of several models could not tell whose request it was."""
    flags = provider_named(provider, open_feature)
    with inprocserve.Server(fraud, flags=flags, models={"fraud": CANARY}) as server:
        with pytest.raises(InvalidInputError) as raised:
            server.predict("fraud", X, context=context)
        assert raised.value.model == "fraud"
        assert str(raised.value).startswith(f"model 'fraud': {says}"), str(raised.value)
        assert server.predict("fraud", X, context={"user_id": "u-1"}).version in (1, 2)  # the next one is served


@pytest.mark.parametrize("blocking", [False, True])
def test_a_context_key_that_is_no_string_is_an_invalid_input_error_naming_the_model(
    fraud: Path, open_feature: inprocserve.OpenFeatureFlags, blocking: bool
) -> None:
    """rollouts.md: with OpenFeatureFlags, a key of `context` that is not a string "is the request's
    InvalidInputError too"; errors.md: it carries the model it concerns."""
    flags = open_feature if not blocking else inprocserve.OpenFeatureFlags(domain=DOMAIN, blocking=True)
    with inprocserve.Server(fraud, flags=flags, models={"fraud": CANARY}) as server:
        with pytest.raises(InvalidInputError) as raised:
            server.predict("fraud", X, context={"user_id": "u-1", 3: "x"})
        assert raised.value.model == "fraud"
        assert str(raised.value).startswith("model 'fraud': the context key 3 is a int, not a string"), str(
            raised.value
        )


@pytest.mark.parametrize("path", ["interleave", "kill switch"])
def test_a_context_key_that_is_no_string_names_the_model_on_every_path_that_reads_a_flag(
    fraud: Path, open_feature: inprocserve.OpenFeatureFlags, path: str
) -> None:
    """The same refusal where `interleave()` reads the `<prefix>.rankers` flag, and where the kill switch
    (control file) reads the `<prefix>.stable` flag: "once a flag is evaluated for it" (rollouts.md)."""
    with inprocserve.Server(fraud, flags=open_feature, models={"fraud": CANARY}) as server:
        if path == "kill switch":
            server.kill("fraud")
        with pytest.raises(InvalidInputError) as raised:
            if path == "interleave":
                server.interleave("fraud", {"x": np.ones((3, 4), np.float32)}, context={3: "x"})
            else:
                server.predict("fraud", X, context={3: "x"})
        assert raised.value.model == "fraud"
        assert str(raised.value).startswith("model 'fraud': the context key 3 is a int"), str(raised.value)
