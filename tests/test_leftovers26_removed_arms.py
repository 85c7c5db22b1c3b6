"""A bandit arm removed from the configuration by a reload, on a real server: its record ends with it.

Version N of the ``scale`` model answers ``y = x * N``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve import _rollout
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory

X = np.ones((1, 4), np.float32)
HEAD = '[rollout]\nstrategy = "bandit"\nstable = 1\nseed = 7\n[rollout.variants]\na = { version = 1 }\n'


def _rollout_status(server: inprocserve.Server) -> dict[str, object]:
    return server.status()["models"]["scale"]["rollout"]


def _serve_then_remove_b(
    versions: Path, make_server: ServerFactory
) -> tuple[inprocserve.Server, list[tuple[str, inprocserve.Prediction]]]:
    """A bandit over a, b and c that served 60 keys, then a reload that removed arm b and its version 2."""
    toml = versions / "scale" / "config.toml"
    toml.write_text(HEAD + "b = { version = 2 }\nc = { version = 3 }\n")
    server = make_server(versions)
    results = [(f"u{i}", server.predict("scale", X, context={"user_id": f"u{i}"})) for i in range(60)]
    on_b = [(key, result) for key, result in results if result.variant == "b"]
    assert len(on_b) >= 2 and {result.version for key, result in on_b} == {2}
    assert server.record_outcome(on_b[0][1].request_id, 1.0) == "b"
    toml.write_text(HEAD + "c = { version = 3 }\n")
    shutil.rmtree(versions / "scale" / "2")
    assert server.refresh() == []
    assert "2" not in server.status()["models"]["scale"]["versions"]
    return server, on_b


def test_a_removed_arm_leaves_the_variants_and_its_final_numbers_stay_while_outcomes_may_come(
    versions: Path, make_server: ServerFactory
) -> None:
    server, on_b = _serve_then_remove_b(versions, make_server)
    status = _rollout_status(server)
    assert set(status["variants"]) <= {"a", "c"}
    removed = status["removed_variants"]
    assert set(removed) == {"b"}
    assert removed["b"]["version"] == 2 and removed["b"]["served"] == len(on_b) and removed["b"]["outcomes"] == 1
    # A late outcome by request id of a request the arm served is the arm's: credited, once, shown beside
    assert server.record_outcome(on_b[1][1].request_id, 0.0) == "b"
    assert server.record_outcome(on_b[1][1].request_id, 0.0) is None
    assert _rollout_status(server)["removed_variants"]["b"]["outcomes"] == 2
    assert "b" not in _rollout_status(server)["variants"]
    # New requests draw among the arms configured now
    assert {server.predict("scale", X, context={"user_id": f"v{i}"}).variant for i in range(30)} <= {"a", "c"}
    assert "b" not in _rollout_status(server)["variants"]


def test_an_outcome_by_key_whose_last_draw_was_a_removed_arm_credits_nothing(
    versions: Path, make_server: ServerFactory
) -> None:
    server, on_b = _serve_then_remove_b(versions, make_server)
    keys_of_b = [key for key, result in on_b]
    # The reload ended the arm: a key's outcome cannot tell which request it is of, nor credit the arm's record
    assert [server.record_outcome(None, 1.0, model="scale", key=key) for key in keys_of_b] == [None] * len(on_b)
    status = _rollout_status(server)
    assert "b" not in status["variants"] and status["removed_variants"]["b"]["outcomes"] == 1


def test_a_removed_arms_numbers_go_once_its_requests_outcomes_can_no_longer_come(
    versions: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, on_b = _serve_then_remove_b(versions, make_server)
    monkeypatch.setattr(_rollout, "_ASSIGNMENT_TTL_S", 0.0)  # (request ids remembered for no time at all)
    assert "removed_variants" not in _rollout_status(server) or not _rollout_status(server)["removed_variants"]
    assert server.record_outcome(on_b[1][1].request_id, 1.0) is None


def test_an_arm_added_back_with_its_version_starts_afresh(versions: Path, make_server: ServerFactory) -> None:
    server, on_b = _serve_then_remove_b(versions, make_server)
    save_model(build_scale_model(2.0), versions, "scale", 2)
    (versions / "scale" / "config.toml").write_text(HEAD + "b = { version = 2 }\nc = { version = 3 }\n")
    assert server.refresh() == []
    assert server.status()["models"]["scale"]["versions"]["2"]["state"] == "ready"
    status = _rollout_status(server)
    assert not status.get("removed_variants")
    assert status["variants"].get("b", {"served": 0})["served"] == 0
    assert server.record_outcome(on_b[1][1].request_id, 1.0) is None  # (of the arm's earlier life: ended)
