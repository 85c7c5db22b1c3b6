"""Validation of requests against a model's signature, through the public predict API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve import InvalidInputError
from inprocserve._signature import Signature, TensorSpec
from inprocserve.testing import build_add_model, build_scale_model, build_sum_model, save_model

from .conftest import ServerFactory


@pytest.fixture
def server(repository: Path, make_server: ServerFactory) -> inprocserve.Server:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_add_model(), repository, "add", 1)
    save_model(build_sum_model(fixed_batch=2), repository, "fixed", 1)
    return make_server(
        repository,
        models={
            "strict": inprocserve.ModelConfig(nan_policy="reject"),
            "small": inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_request_rows=3)),
        },
    )


@pytest.fixture
def strict_server(repository: Path, make_server: ServerFactory) -> inprocserve.Server:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    return make_server(
        repository,
        config=inprocserve.ModelConfig(
            nan_policy="reject", batching=inprocserve.BatchingConfig(max_request_rows=3, max_queue_rows=16)
        ),
    )


def add_inputs(rows: int = 2) -> dict[str, np.ndarray]:
    return {
        "a": np.ones((rows, 3), np.float32),
        "b": np.ones((rows, 3), np.float32),
        "n": np.ones((rows, 1), np.int64),
    }


@pytest.mark.parametrize(
    ("inputs", "fragments"),
    [
        ({"a": np.ones((2, 3), np.float32)}, ["missing input(s) 'b', 'n'", "the model takes a: tensor(float)"]),
        ({**add_inputs(), "c": np.ones(2)}, ["unknown input(s) 'c'"]),
        ({"a": 1, "b": 1, "x": 1}, ["missing input(s) 'n'", "unknown input(s) 'x'"]),
        ({**add_inputs(), "a": np.ones((2, 4), np.float32)}, ["input 'a'", "expected size 3 on axis 1", "[2, 4]"]),
        ({**add_inputs(), "a": np.ones((2, 3, 1), np.float32)}, ["input 'a'", "expected 2 dimensions", "got 3"]),
        ({**add_inputs(), "n": np.ones((2, 1), np.float64)}, ["input 'n'", "expected dtype int64, got float64"]),
        ({**add_inputs(), "a": np.array([["x", "y", "z"]] * 2)}, ["input 'a'", "expected numbers", "<U1"]),
        ({**add_inputs(), "a": [[1.0, 2.0], [3.0]]}, ["input 'a'", "cannot be turned into an array"]),
        ({**add_inputs(), "a": np.array([{}, {}], dtype=object)}, ["input 'a'", "ragged or non-numeric"]),
        # the numbers of a pandas frame with a text column (df.values[:, 1:]): an object array, though rectangular
        # and all numbers, was refused as "ragged or non-numeric values", saying nothing of what to do
        (
            {**add_inputs(), "a": np.array([[1.0, 2, 3], [4, 5, 6]], dtype=object)},
            ["input 'a'", "numbers held as Python objects", ".astype(np.float32)"],
        ),
        ({**add_inputs(), "a": np.array([[1.0, 2, None]] * 2, dtype=object)}, ["element #2 is NoneType"]),
        # an integer input's floats as objects: the advice was .astype(np.int64), which cuts 2.7 to 2 (a float64
        # array is refused for it); they are named as floats, as the float64 array's refusal does
        (
            {**add_inputs(), "n": np.array([[2.7], [1.0]], dtype=object)},
            ["input 'n'", "element #0 is float (ragged or non-integer values); send integers"],
        ),
        ({**add_inputs(), "n": np.array([[2], [1]], dtype=object)}, ["integers held as Python objects", "np.int64"]),
        ({**add_inputs(), "b": np.ones((3, 3), np.float32)}, ["input 'b'", "has 3 rows", "have 2"]),
        ("not a mapping", ["inputs must be a mapping", "this model takes: a, b, n"]),
        ({1: np.ones(2)}, ["input names must be strings"]),
    ],
)
def test_bad_inputs_name_the_input_and_what_to_fix(
    server: inprocserve.Server, inputs: object, fragments: list[str]
) -> None:
    with pytest.raises(InvalidInputError) as info:
        server.predict("add", inputs)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert (info.value.model, info.value.version) == ("add", 1)
    assert str(info.value).startswith("model 'add' version 1: ")


def test_invalid_input_through_submit_names_the_model_too(server: inprocserve.Server) -> None:
    error = server.submit("scale", np.ones((1, 3), np.float32)).exception(timeout=10)
    assert isinstance(error, InvalidInputError)
    assert (error.model, error.version) == ("scale", 1) and "model 'scale'" in str(error)


@pytest.mark.parametrize(
    "value",
    [np.array([[1e300, 0, 0, 0]]), [[1e39, 0.0, 0.0, 0.0]], np.array([[-3.5e38, 1, 2, 3]])],
    ids=["float64-array", "python-floats", "negative"],
)
def test_float64_beyond_float32_is_a_typed_error_not_a_warning(server: inprocserve.Server, value: object) -> None:
    # pytest turns warnings into errors here, so a RuntimeWarning escaping would fail with another type.
    with pytest.raises(InvalidInputError, match=r"input 'x': holds finite values beyond the range of float32"):
        server.predict("scale", value)


def test_nan_and_infinity_in_float64_still_pass_through(server: inprocserve.Server) -> None:
    result = server.predict("scale", np.array([[np.inf, -np.inf, np.nan, 3.4e38]]))
    assert np.isposinf(result["y"][0, 0]) and np.isneginf(result["y"][0, 1]) and np.isnan(result["y"][0, 2])


def test_int_overflow_into_a_narrower_type_is_refused(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_add_model(), repository, "add", 1)
    server = make_server(repository)
    # int64 values beyond int64 cannot exist; use uint64 values that do not fit int64 instead
    inputs = {**add_inputs(1), "n": np.array([[2**63 + 5]], dtype=np.uint64)}
    with pytest.raises(InvalidInputError, match="input 'n'"):
        server.predict("add", inputs)


def test_integers_reach_an_unsigned_input_when_they_fit(repository: Path, make_server: ServerFactory) -> None:
    # An image model takes uint8 pixels; a JSON client (or a plain list) sends Python ints, which are int64.
    from onnx import TensorProto, helper

    from inprocserve.testing import _model

    to_float = _model(
        [helper.make_node("Cast", ["pixels"], ["y"], to=TensorProto.FLOAT)],
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    save_model(to_float, repository, "image", 1)
    server = make_server(repository)
    assert server.predict("image", [[0, 1, 128, 255]])["y"].tolist() == [[0.0, 1.0, 128.0, 255.0]]
    assert server.predict("image", np.array([[0, 1, 2, 3]], np.int32))["y"].tolist() == [[0.0, 1.0, 2.0, 3.0]]
    for values in ([[0, 1, 2, 256]], [[-1, 0, 0, 0]]):
        with pytest.raises(InvalidInputError, match=r"do not fit in uint8 \(0\.\.255\)"):
            server.predict("image", values)
    with pytest.raises(InvalidInputError, match="cannot be converted without losing meaning"):
        server.predict("image", [[0.5, 1.0, 2.0, 3.0]])  # floats for integers: still refused


def test_safe_conversions_are_applied(server: inprocserve.Server) -> None:
    result = server.predict(
        "add",
        {
            "a": [[1, 2, 3], [4, 5, 6]],  # Python ints -> float32
            "b": np.ones((2, 3), np.float64),  # float64 -> float32
            "n": [[1], [2]],  # Python ints -> int64
        },
    )
    assert result["total"].dtype == np.float32
    np.testing.assert_array_equal(result["total"], [[2, 3, 4], [5, 6, 7]])
    np.testing.assert_array_equal(result["count"], [[2], [4]])


def test_a_one_input_model_takes_a_bare_array(server: inprocserve.Server) -> None:
    result = server.predict("scale", [[1, 2, 3, 4]])
    np.testing.assert_array_equal(result["y"], [[2, 4, 6, 8]])


def test_a_masked_arrays_masked_values_are_refused_not_scored_as_the_numbers_they_hide(
    server: inprocserve.Server,
) -> None:
    x = np.ma.masked_array(np.arange(12, dtype=np.float32).reshape(3, 4), mask=False)
    np.testing.assert_array_equal(server.predict("scale", x)["y"], x.data * 2)  # nothing masked: its values
    x[2, 1] = np.ma.masked  # a missing value (np.asarray took the 9.0 under the mask, and scored it)
    for inputs in (x, {"x": x}):
        with pytest.raises(InvalidInputError, match=r"masked array with 1 masked .* row 2\); fill them"):
            server.predict("scale", inputs)
    with pytest.raises(InvalidInputError, match=r"'a': a masked array with 2 masked"):
        server.predict("add", {**add_inputs(), "a": np.ma.masked_invalid([[1, np.nan, 2], [np.nan, 3, 4]])})
    # predict_many: a whole input at the call, a batch of an iterable at its place
    rows = np.ma.masked_array(np.ones((200, 4), np.float32), mask=False)
    rows[150, 0] = np.ma.masked
    for whole in (rows, {"x": rows}):
        with pytest.raises(InvalidInputError, match=r"masked array with 1 masked .* row 150\)"):
            server.predict_many("scale", whole)
    answers = server.predict_many("scale", iter([rows[:100], rows[100:]]))
    assert len(next(answers)["y"]) == 100
    with pytest.raises(InvalidInputError, match=r"masked array with 1 masked .* row 50\)"):
        next(answers)


def test_a_masked_record_array_is_an_input_error_like_any_record_array(server: inprocserve.Server) -> None:
    # a record array's mask has a field per field: its check raised numpy's TypeError, not the typed error
    records = np.ma.masked_array(np.zeros(2, dtype=[("a", "f4"), ("b", "f4")]), mask=[(False, True), (False, False)])
    with pytest.raises(InvalidInputError, match=r"masked array with 1 masked .* row 0\)"):
        server.predict("scale", records)
    with pytest.raises(InvalidInputError, match=r"masked array with 1 masked .* row 0\)"):
        list(server.predict_many("scale", records))
    with pytest.raises(InvalidInputError, match=r"expected numbers of dtype float32, got dtype \[\('a'"):
        server.predict("scale", records.filled(0.0))  # nothing masked: refused as a record array is
    with pytest.raises(InvalidInputError, match=r"expected numbers of dtype float32, got dtype \[\('a'"):
        server.predict("scale", np.ma.masked_array(records.filled(0.0)))


def test_zero_rows_are_refused(server: inprocserve.Server) -> None:
    with pytest.raises(InvalidInputError, match="0 rows"):
        server.predict("scale", np.ones((0, 4), np.float32))


def test_fixed_batch_dimension_is_enforced(server: inprocserve.Server) -> None:
    with pytest.raises(InvalidInputError, match="expected size 2 on axis 0"):
        server.predict("fixed", np.ones((3, 4), np.float32))
    assert float(server.predict("fixed", np.ones((2, 4), np.float32))["total"]) == 8.0


def test_nan_policy_reject(strict_server: inprocserve.Server) -> None:
    x = np.ones((2, 4), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(InvalidInputError, match=r"NaN or infinite.*nan_policy"):
        strict_server.predict("scale", x)
    x[1, 2] = np.inf
    with pytest.raises(InvalidInputError, match="1 NaN or infinite"):
        strict_server.predict("scale", x)


def test_nan_policy_allow_is_the_default(server: inprocserve.Server) -> None:
    x = np.full((1, 4), np.nan, np.float32)
    assert np.isnan(server.predict("scale", x)["y"]).all()


def test_max_rows_per_request(strict_server: inprocserve.Server) -> None:
    with pytest.raises(InvalidInputError, match="4 rows, more than the 3 allowed"):
        strict_server.predict("scale", np.ones((4, 4), np.float32))
    assert strict_server.predict("scale", np.ones((3, 4), np.float32))["y"].shape == (3, 4)


def test_invalid_input_never_reaches_the_queue(server: inprocserve.Server) -> None:
    with pytest.raises(InvalidInputError):
        server.predict("scale", np.ones((1, 5), np.float32))
    status = server.status()["models"]["scale"]["versions"]["1"]
    assert status["in_flight"] == 0
    assert status["rows_run"] == 0


def test_a_bool_input_s_booleans_held_as_objects_are_named_as_booleans() -> None:
    # (refused as "element #0 is bool (ragged or non-numeric values); send numbers", for an input of bools)
    signature = Signature(
        [TensorSpec("flag", "tensor(bool)", np.dtype(bool), (None, 1))],
        [TensorSpec("y", "tensor(float)", np.dtype(np.float32), (None,))],
    )
    with pytest.raises(InvalidInputError, match=r"got booleans held as Python objects .*\.astype\(bool\)"):
        signature.validate({"flag": np.array([[True], [False]], dtype=object)}, max_rows=8)
    with pytest.raises(InvalidInputError, match=r"element #1 is float \(ragged or non-boolean values\); send booleans"):
        signature.validate({"flag": np.array([[True], [0.5]], dtype=object)}, max_rows=8)


@pytest.fixture
def small_server(repository: Path, make_server: ServerFactory) -> inprocserve.Server:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    return make_server(
        repository, config=inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_request_rows=3))
    )


def _as_given(form: str, x: object) -> object:
    """``x`` as a caller sends a one-input model's input: by name in a dict, or bare."""
    return {"x": x} if form == "by name" else x


@pytest.mark.parametrize("form", ["by name", "bare"])
@pytest.mark.parametrize(
    ("x", "fragment"),
    [
        (np.ones((4, 4), np.float32), "4 rows, more than the 3 allowed"),
        (np.ones((0, 4), np.float32), "0 rows"),
        (np.ones((2, 5), np.float32), "expected size 4 on axis 1"),
        (np.ones((2, 4, 1), np.float32), "expected 2 dimensions"),
    ],
)
def test_a_one_input_array_of_the_right_dtype_is_checked_like_any_request(
    small_server: inprocserve.Server, x: np.ndarray, fragment: str, form: str
) -> None:
    # (one array of the input's dtype, by name or bare, takes validate's shortest way, which refuses nothing
    # itself: whatever it does not take gets the full checks and their messages)
    assert small_server.predict("scale", _as_given(form, np.ones((3, 4), np.float32)))["y"].shape == (3, 4)
    with pytest.raises(InvalidInputError, match=fragment):
        small_server.predict("scale", _as_given(form, x))


@pytest.mark.parametrize("form", ["by name", "bare"])
def test_a_one_input_array_under_nan_policy_reject_is_checked_for_nan(
    strict_server: inprocserve.Server, form: str
) -> None:
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        strict_server.predict("scale", _as_given(form, np.full((2, 4), np.nan, np.float32)))


@pytest.mark.parametrize("form", ["by name", "bare"])
def test_a_one_input_array_of_another_byte_order_or_subclass_is_still_answered(
    server: inprocserve.Server, form: str
) -> None:
    for x in (np.ones((2, 4), ">f4"), np.ma.MaskedArray(np.ones((2, 4), np.float32)), np.ones((2, 4), np.float32)):
        assert server.predict("scale", _as_given(form, x))["y"].tolist() == [[2.0] * 4] * 2
