"""Property-based checks of batch scoring (``Server.predict_many``) with hypothesis: whatever the sizes of an
iterable's batches or of a whole input, and whatever ``batch_rows`` and ``max_in_flight`` say, every row is
answered once, by its own answer, in order; a batch the model cannot take is refused at its place with a typed
error naming the model, after the answers before it.

Three kinds of model, each with small limits so that a few dozen rows are cut into chunks, requests and parts:
a model with a batch axis, one that takes a single value beside its rows (cut only because its config says
its rows are independent), and one whose file fixes axis 0 at 4 rows (examples in ``make test``: the
``default`` profile of conftest.py; ``make soak`` draws more).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import inprocserve
from inprocserve import BatchingConfig, InvalidInputError, ModelConfig
from inprocserve.testing import build_scale_model, save_model

from .test_scoring_fixed_rows import build_fixed_rows_model
from .test_scoring_verdicts import build_threshold_model

SMALL = BatchingConfig(max_batch_size=8, max_request_rows=32, max_queue_rows=64)
"""Limits small enough that batches of a few dozen rows are sent in parts, and whole inputs in chunks."""

FIXED = 4  # rows per run of the "four" model


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[inprocserve.Server]:
    repository = tmp_path_factory.mktemp("scoring") / "models"
    save_model(build_scale_model(2.0), repository, "double", 1)
    save_model(build_threshold_model(), repository, "scaled", 1)
    save_model(build_fixed_rows_model(FIXED), repository, "four", 1)
    trusted = BatchingConfig(
        max_batch_size=8, max_request_rows=32, max_queue_rows=64, rows_independent="yes", enabled=False
    )
    models = {"double": ModelConfig(batching=SMALL), "scaled": ModelConfig(batching=trusted)}
    with inprocserve.Server(repository, models=models) as served:
        yield served


def rows_of(count: int, start: int) -> np.ndarray:
    """``count`` distinct rows: every answer can be told apart from its neighbours'."""
    return np.arange(start, start + 4 * count, dtype=np.float32).reshape(count, 4)


def batch_for(model: str, x: np.ndarray, scale: float) -> Any:
    return {"x": x, "scale": np.float32(scale)} if model == "scaled" else x


def expected(model: str, x: np.ndarray, scale: float) -> np.ndarray:
    if model == "double":
        return 2 * x
    if model == "scaled":
        return x * np.float32(scale)
    return x * x  # "four": y = x * x


limits = st.one_of(st.none(), st.integers(1, 3))


HOSTILE = {
    "a column short": lambda model, x: batch_for(model, x[:, :3], 1),
    "text": lambda model, x: "not rows",
    "an empty mapping": lambda model, x: {},
    "an unknown input": lambda model, x: {"x": x, "scale": np.float32(1), "extra": x},
}
"""Batches a caller (or a queue's message) may send that no model here takes, whatever their rows."""


@given(
    model=st.sampled_from(["double", "scaled", "four"]),
    sizes=st.lists(st.integers(0, 70), max_size=8),
    scales=st.lists(st.integers(-3, 3), min_size=8, max_size=8),
    max_in_flight=limits,
    hostile=st.one_of(st.none(), st.tuples(st.integers(0, 7), st.sampled_from(sorted(HOSTILE)))),
)
@example(model="four", sizes=[0], scales=[0] * 8, max_in_flight=None, hostile=(0, "a column short"))  # (was answered)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_batch_of_an_iterable_is_answered_in_its_place_or_refused_there(
    server: inprocserve.Server,
    model: str,
    sizes: list[int],
    scales: list[int],
    max_in_flight: int | None,
    hostile: tuple[int, str] | None,
) -> None:
    starts = np.cumsum([0, *sizes])
    xs = [rows_of(size, int(4 * start)) for size, start in zip(sizes, starts, strict=False)]
    batches = [batch_for(model, x, scale) for x, scale in zip(xs, scales, strict=False)]
    bad = None if hostile is None or hostile[0] >= len(batches) else hostile[0]
    if bad is not None:
        assert hostile is not None
        batches[bad] = HOSTILE[hostile[1]](model, xs[bad])
    answers = server.predict_many(model, iter(batches), max_in_flight=max_in_flight)
    for position, (x, scale) in enumerate(zip(xs, scales, strict=False)):
        if position == bad or (model == "four" and len(x) % FIXED):
            # refused at its place, after the answers before it, naming the model; nothing is read after it
            with pytest.raises(InvalidInputError, match=rf"^model '{model}'") as refused:
                next(answers)
            assert refused.value.model == model, str(refused.value)
            if position != bad:
                assert str(refused.value).startswith("model 'four': it takes exactly 4 rows")
            return
        answer = next(answers)
        np.testing.assert_array_equal(answer["y"], expected(model, x, scale), err_msg=f"batch {position}")
        assert answer["y"].shape == (len(x), 4) and answer["y"].dtype == np.float32
    assert next(answers, None) is None


@given(
    model=st.sampled_from(["double", "scaled", "four"]),
    rows=st.integers(0, 200),
    batch_rows=st.one_of(st.none(), st.integers(1, 32)),
    max_in_flight=limits,
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_whole_input_is_answered_chunk_by_chunk_in_order(
    server: inprocserve.Server, model: str, rows: int, batch_rows: int | None, max_in_flight: int | None
) -> None:
    x = rows_of(rows, 0)
    if model == "four":
        batch_rows = None if batch_rows is None else FIXED  # (any other is refused, saying so: its own test)
        if rows % FIXED:
            with pytest.raises(InvalidInputError, match=r"^model 'four' version 1 takes exactly 4 rows"):
                server.predict_many(model, x, batch_rows=batch_rows, max_in_flight=max_in_flight)
            return
    answers = list(
        server.predict_many(model, batch_for(model, x, 3), batch_rows=batch_rows, max_in_flight=max_in_flight)
    )
    chunk = FIXED if model == "four" else batch_rows or SMALL.max_batch_size
    assert [len(answer["y"]) for answer in answers] == [min(chunk, rows - start) for start in range(0, rows, chunk)]
    joined = np.concatenate([answer["y"] for answer in answers]) if answers else np.zeros((0, 4), np.float32)
    np.testing.assert_array_equal(joined, expected(model, x, 3))


def test_the_models_are_what_the_properties_assume(server: inprocserve.Server) -> None:
    """The three kinds above: merged, cut only on the config's word, and fixed at 4 rows (else the properties
    would check less than they say)."""
    versions = {name: server.status()["models"][name]["versions"]["1"] for name in ("double", "scaled", "four")}
    assert versions["double"]["unbatchable_reason"] is None
    assert "no dynamic axis 0" in versions["scaled"]["unbatchable_reason"]
    assert versions["four"]["unbatchable_reason"]
