"""Property-based fuzzing of ``Server.predict`` and ``Server.apredict`` inputs with hypothesis.

Every outcome must be a correct answer (checked against a raw onnxruntime session fed the same values
cast to the model's types) or a typed :class:`inprocserve.InprocserveError`; anything else (a bare
``ValueError``, ``OverflowError``, ``RuntimeWarning`` under ``-W error``, a crash, a hang) fails.

500 examples per property by default (derandomized, so ``make test`` is repeatable); ``HYPOTHESIS_PROFILE=soak``
runs 10,000 random ones per property (``make soak``).
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import inprocserve
from inprocserve.testing import build_add_model, build_scale_model, save_model

# (the profiles, "default" and "soak", are set in conftest.py)

MODELS = {"scale": build_scale_model(2.0), "add": build_add_model()}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[inprocserve.Server, dict[str, Any]]]:
    repository = tmp_path_factory.mktemp("fuzz") / "models"
    for name, model in MODELS.items():
        save_model(model, repository, name, 1)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    raw = {
        name: ort.InferenceSession(
            str(repository / name / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        for name in MODELS
    }
    server = inprocserve.Server(repository)
    try:
        yield server, raw
    finally:
        server.close(timeout_s=10)


# -- strategies -------------------------------------------------------------------------------------------

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
scalars = st.one_of(
    floats,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.complex_numbers(allow_nan=True),
)
nested = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5), max_leaves=40)
dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.complex_number_dtypes(),
    hnp.datetime64_dtypes(),
    hnp.byte_string_dtypes(max_len=3),
    hnp.unicode_string_dtypes(max_len=3),
)
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
arrays = st.one_of(
    hnp.arrays(dtypes, shapes),
    # shapes a model takes, in every numeric dtype: the values decide (NaN, inf, huge, out of range)
    hnp.arrays(
        st.one_of(hnp.integer_dtypes(), hnp.floating_dtypes(), hnp.boolean_dtypes()),
        st.sampled_from([(1, 4), (3, 4), (2, 3), (2, 1), (2,)]),
    ),
    st.builds(lambda items: np.array([*items, object()], dtype=object), st.lists(scalars, max_size=4)),
)
values = st.one_of(arrays, nested, scalars, st.dictionaries(st.text(max_size=3), scalars, max_size=3))
names = st.one_of(st.sampled_from(["x", "a", "b", "n"]), st.text(max_size=4), st.integers(), st.none())
requests = st.one_of(values, st.dictionaries(names, values, max_size=4))


def expected_answer(raw: Any, request: Any) -> dict[str, np.ndarray]:
    """What onnxruntime answers for the values the server accepted, cast as the signature casts them."""
    feeds = request if isinstance(request, dict) else {raw.get_inputs()[0].name: request}
    cast = {}
    for node in raw.get_inputs():
        dtype = np.float32 if node.type == "tensor(float)" else np.int64
        with np.errstate(over="ignore", invalid="ignore"):
            cast[node.name] = np.asarray(feeds[node.name]).astype(dtype)
    outputs = raw.run(None, cast)
    return {node.name: value for node, value in zip(raw.get_outputs(), outputs, strict=True)}


def check(server: inprocserve.Server, raw: dict[str, Any], model: str, request: Any) -> None:
    try:
        result = server.predict(model, request, timeout_s=30)
    except inprocserve.InprocserveError:
        return  # refused with a typed error: allowed
    expected = expected_answer(raw[model], request)
    assert set(result) == set(expected)
    for name, array in expected.items():
        np.testing.assert_array_equal(result[name], array)
        assert result[name].dtype == array.dtype


@given(model=st.sampled_from(sorted(MODELS)), request=requests)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
def test_any_input_is_answered_correctly_or_refused_with_a_typed_error(
    served: tuple[inprocserve.Server, dict[str, Any]], model: str, request: Any
) -> None:
    server, raw = served
    check(server, raw, model, request)


finite_rows = st.integers(min_value=1, max_value=8).flatmap(
    lambda rows: st.fixed_dictionaries(
        {
            "a": hnp.arrays(np.float32, (rows, 3), elements=st.floats(-1e6, 1e6, width=32)),
            "b": hnp.arrays(np.float32, (rows, 3), elements=st.floats(-1e6, 1e6, width=32)),
            "n": hnp.arrays(np.int64, (rows, 1), elements=st.integers(-(2**40), 2**40)),
        }
    )
)


@given(request=finite_rows)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
def test_well_formed_input_is_always_answered_correctly(
    served: tuple[inprocserve.Server, dict[str, Any]], request: dict[str, np.ndarray]
) -> None:
    server, raw = served
    result = server.predict("add", request, timeout_s=30)  # never refused
    expected = expected_answer(raw["add"], request)
    for name, array in expected.items():
        np.testing.assert_array_equal(result[name], array)


@given(
    batch=st.lists(
        st.one_of(
            finite_rows.map(lambda request: ("add", request)), st.tuples(st.sampled_from(sorted(MODELS)), requests)
        ),
        min_size=1,
        max_size=16,
    )
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
def test_one_loop_iterations_requests_are_each_answered_correctly_or_refused(
    served: tuple[inprocserve.Server, dict[str, Any]], batch: list[tuple[str, Any]]
) -> None:
    """Tasks of one event-loop iteration, well-formed and hostile mixed: the loop merges the requests it
    accepts, and each task still gets exactly its own rows' answer, or a typed error of its own."""
    server, raw = served

    async def main() -> list[Any]:
        calls = (server.apredict(model, request, timeout_s=30) for model, request in batch)
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    for (model, request), result in zip(batch, results, strict=True):
        if isinstance(result, inprocserve.InprocserveError):
            continue  # refused with a typed error: allowed
        assert isinstance(result, inprocserve.Prediction), repr(result)
        expected = expected_answer(raw[model], request)
        assert set(result) == set(expected)
        for name, array in expected.items():
            np.testing.assert_array_equal(result[name], array)
            assert result[name].dtype == array.dtype


def test_the_fuzz_budget_is_what_the_suite_promises() -> None:
    """``make test`` fuzzes at least 500 examples per property, ``make soak`` 10,000."""
    wanted = 10_000 if os.environ.get("HYPOTHESIS_PROFILE") == "soak" else 500
    assert settings().max_examples >= wanted
    assert Path(__file__).name == "test_fuzz.py"


def test_every_property_test_of_the_folder_is_repeatable_and_keeps_no_database() -> None:
    """Whatever files pytest collects, and in whatever order pytest-xdist's processes import them: no property
    test draws at random in ``make test`` or writes a .hypothesis example database both processes share."""
    folder = Path(__file__).parent
    soak = os.environ.get("HYPOTHESIS_PROFILE") == "soak"
    checked = []
    for path in sorted(folder.glob("test_*.py")):
        if "@given" not in path.read_text():
            continue
        module = importlib.import_module(f"{__package__}.{path.stem}")
        for name, test in vars(module).items():
            chosen = getattr(test, "_hypothesis_internal_use_settings", None)
            if name.startswith("test_") and chosen is not None:
                assert chosen.database is None, f"{path.name}::{name} keeps an example database"
                assert soak or chosen.derandomize, f"{path.name}::{name} draws its examples at random"
                checked.append(name)
    assert len(checked) >= 8, checked
