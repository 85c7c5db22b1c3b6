"""What a client sends reaches an OpenFeature provider only within bounds: the request's context becomes the
evaluation context (the targeting key and every scalar field), so a megabyte of user id, a lone surrogate or a
thousand fields is the request's InvalidInputError, saying what to send, and never reaches the provider; control
characters are text, and pass. flagd's own engine reads the flags file (its FILE resolver); a hook of the
OpenFeature client notes every context the provider is asked with."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import CanaryConfig

from .conftest import ServerFactory, rollout

api = pytest.importorskip("openfeature.api")
flagd = pytest.importorskip("openfeature.contrib.provider.flagd")
from openfeature.contrib.provider.flagd.config import ResolverType  # noqa: E402
from openfeature.hook import Hook  # noqa: E402
from openfeature.provider.in_memory_provider import InMemoryProvider  # noqa: E402

X = np.ones((1, 4), np.float32)
CANARY = rollout(strategy="canary", stable=1, canary=CanaryConfig(version=2))
LIMIT = inprocserve._flags.MAX_CONTEXT_TEXT_CHARS


class _Seen(Hook):
    """Notes the evaluation context of every evaluation the client makes."""

    def __init__(self) -> None:
        self.contexts: list[Any] = []

    def before(self, hook_context: Any, hints: Any) -> None:
        self.contexts.append(hook_context.evaluation_context)


@pytest.fixture
def seen(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Any, _Seen]]:
    domain = f"inprocserve-flagfleet-{request.node.name}"
    rule = {"if": [{"starts_with": [{"var": "targetingKey"}, "staff"]}, "all", "none"]}
    spec = {"state": "ENABLED", "defaultVariant": "none", "variants": {"none": 0, "all": 100}, "targeting": rule}
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({"flags": {"scale.canary.percent": spec}}))
    provider = flagd.FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(path))
    api.set_provider_and_wait(provider, domain=domain)
    hook = _Seen()
    client = api.get_client(domain)  # (a new client each call: the hook is this one's)
    client.add_hooks([hook])
    try:
        yield client, hook
    finally:
        provider.shutdown()
        api.set_provider(InMemoryProvider({}), domain=domain)


HOSTILE = [
    ({"user_id": "staff" + "x" * (1 << 20)}, "the targeting key ('user_id' or 'targeting_key' in the context) is "),
    ({"user_id": "u1", "agent": "x" * (LIMIT + 1)}, "the context's 'agent' is 4,097 characters long; send at most"),
    ({"user_id": "staff\udcff"}, "is no UTF-8 text (it holds a lone surrogate"),
    ({"user_id": "u1", "agent": "a\udcffb"}, "the context's 'agent' is no UTF-8 text"),
    (
        {"user_id": "u1", **{f"f{i}": i for i in range(300)}},
        "the context has more than 256 fields of text, numbers or booleans; send at most 256",
    ),
]


@pytest.mark.parametrize(
    ("context", "said"), HOSTILE, ids=["1MB key", "long field", "surrogate key", "surrogate", "fields"]
)
def test_a_hostile_context_is_refused_before_it_reaches_the_provider(
    versions: Path, make_server: ServerFactory, seen: tuple[Any, _Seen], context: dict[str, Any], said: str
) -> None:
    client, hook = seen
    flags = inprocserve.OpenFeatureFlags(client)
    server = make_server(versions, flags=flags, flag_timeout_s=10.0, config=CANARY)
    assert server.predict("scale", X, context={"user_id": "staff-1"}).version == 2  # (the rule works)
    assert hook.contexts  # (and the hook sees what the provider is asked with)
    hook.contexts.clear()
    with pytest.raises(inprocserve.InvalidInputError) as refused:
        server.predict("scale", X, context=context)
    assert said in str(refused.value) and "model 'scale'" in str(refused.value), str(refused.value)
    assert len(str(refused.value)) < 600  # (the value shown cut short, not a megabyte of it)
    assert hook.contexts == []  # the provider never saw it
    status = server.status()["models"]["scale"]["rollout"]["flags"]
    assert status["failures"] == status["timeouts"] == 0, status  # the request's mistake, not the provider's


def test_control_characters_and_a_key_at_the_limit_reach_the_provider_as_sent(
    versions: Path, make_server: ServerFactory, seen: tuple[Any, _Seen]
) -> None:
    client, hook = seen
    server = make_server(versions, flags=inprocserve.OpenFeatureFlags(client), flag_timeout_s=10.0, config=CANARY)
    key = "staff\x00\x1b[31m\r\nX-Injected: 1" + "é" * (LIMIT - 30)
    assert len(key) <= LIMIT
    result = server.predict("scale", X, context={"user_id": key, "agent": "\t\x7f"})
    assert (result.version, result.variant) == (2, "canary"), result.reason
    assert hook.contexts and all(c.targeting_key == key for c in hook.contexts)
    assert hook.contexts[-1].attributes == {"agent": "\t\x7f"}
