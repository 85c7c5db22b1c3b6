"""Bounds on the values of inputs (``[inputs.NAME]`` in config.toml, ``ModelConfig(inputs=...)``).

A model whose integer input sets a size (a ``ConstantOfShape`` count, a ``Range`` limit, a generation length)
allocated and touched gigabytes for a client's ``500000000``; a bound refuses such a request alone with an
``InvalidInputError`` before anything is queued or run, on every way a request takes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import inprocserve
from inprocserve import ConfigurationError, InputBounds, InvalidInputError, ModelConfig, ModelLoadError, _server
from inprocserve._config import load_model_config
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory, busy_inputs, occupy, version_status

BOUNDED = "[inputs.n]\nmin = 0\nmax = 4096\n"


def build_filled_model() -> onnx.ModelProto:
    """``total = sum(ConstantOfShape(n))``: ``n[1]`` (int64) ones are allocated and added up, so the answer
    is ``n`` and the memory a run touches is ``4 * n`` bytes."""
    ones = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [
        helper.make_node("ConstantOfShape", ["n"], ["filled"], value=ones),
        helper.make_node("ReduceSum", ["filled"], ["total"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "filled",
        [helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_flag_model() -> onnx.ModelProto:
    """``y = flag`` on a bool input: nothing to bound."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["flag"], ["y"])],
        "flag",
        [helper.make_tensor_value_info("flag", TensorProto.BOOL, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.BOOL, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def filled_repository(repository: Path) -> Path:
    """``filled`` version 1, its ``n`` bounded to 0..4096 by its config.toml."""
    save_model(build_filled_model(), repository, "filled", 1)
    (repository / "filled" / "config.toml").write_text(BOUNDED)
    return repository


@pytest.fixture
def forbid_full_way(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to fail any request that takes the full way from then on (it builds a ``Request``)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("this request took the full way")

    return lambda: monkeypatch.setattr(_server, "Request", refuse)


def n(value: int) -> np.ndarray:
    return np.array([value], dtype=np.int64)


# -- the configuration ------------------------------------------------------------------------------------


def test_inputs_tables_of_config_toml_are_the_bounds_given_in_code(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[inputs.max_length]\nmin = 1\nmax = 4096\n\n[inputs.temperature]\nmax = 2.5\n")
    config = load_model_config(path)
    assert config.inputs == {"max_length": InputBounds(min=1, max=4096), "temperature": InputBounds(max=2.5)}
    in_code = {"max_length": InputBounds(min=1, max=4096), "temperature": InputBounds(max=2.5)}
    assert config == ModelConfig(inputs=in_code)
    assert ModelConfig().merged({"inputs": {"max_length": {"max": 8}}}).inputs == {"max_length": InputBounds(max=8)}
    assert ModelConfig(inputs={"k": {"min": np.int64(1)}}).inputs == {"k": InputBounds(min=1)}  # a table in code too
    assert type(ModelConfig(inputs={"k": InputBounds(min=np.int64(1))}).inputs["k"].min) is int


def test_inputs_given_in_code_replace_the_files_input_by_input(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[inputs.a]\nmin = 1\nmax = 9\n[inputs.b]\nmax = 3\n")
    file = load_model_config(path)
    laid = file.overlaid(ModelConfig(inputs={"b": InputBounds(min=-1), "c": InputBounds(max=7)}))
    assert laid.inputs == {"a": InputBounds(min=1, max=9), "b": InputBounds(min=-1), "c": InputBounds(max=7)}
    assert file.overlaid(ModelConfig()).inputs == file.inputs
    assert load_model_config(path, ModelConfig(inputs={"z": InputBounds(max=1)})).inputs.keys() == {"a", "b", "z"}


@pytest.mark.parametrize(
    ("bounds", "fragment"),
    [
        ({"min": 5, "max": 1}, "min (5) is above max (1): no value could pass"),
        ({"max": "4096"}, "max must be a finite number (an integer or a float), or unset, got '4096'"),
        ({"max": True}, "max must be a finite number (an integer or a float), or unset, got True"),
        ({"min": float("nan")}, "min must be a finite number (an integer or a float), or unset, got nan"),
        ({"max": float("inf")}, "max must be a finite number (an integer or a float), or unset, got inf"),
    ],
)
def test_bad_bounds_are_refused_naming_the_input(bounds: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(fragment)):
        InputBounds(**bounds)
    with pytest.raises(ConfigurationError, match=re.escape(f"inputs.n: {fragment}")):
        ModelConfig(inputs={"n": bounds})
    with pytest.raises(ConfigurationError, match=re.escape(f"config: inputs.n: {fragment}")):
        ModelConfig().merged({"inputs": {"n": bounds}})


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[inputs.n]\nmin = 10\nmax = 1\n", "inputs.n: min \\(10\\) is above max \\(1\\)"),
        ('[inputs.n]\nmax = "4096"\n', "inputs.n: max must be a finite number"),
        ("[inputs.n]\nmax = true\n", "inputs.n: max must be a finite number"),
        ("[inputs.n]\nmax = nan\n", "inputs.n: max must be a finite number"),
        ("[inputs.n]\nmaximum = 5\n", "inputs.n: unknown key\\(s\\) maximum; known keys are max, min"),
        ("[inputs]\nn = 5\n", "inputs.n must be an InputBounds or a table of min and max"),
        ("inputs = 5\n", "inputs must be tables of min and max"),
    ],
)
def test_bad_inputs_tables_of_config_toml_name_the_file_and_the_input(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=f"config.toml: {fragment}"):
        load_model_config(path)


def test_a_key_a_newer_release_reads_in_an_inputs_table_is_left_out_and_named(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[inputs.n]\nmax = 8\nstep = 2\n")
    ignored: list[str] = []
    assert load_model_config(path, ignored=ignored).inputs == {"n": InputBounds(max=8)}
    assert ignored == ["[inputs.n] step"]


def test_a_bound_on_an_input_the_model_lacks_fails_the_load(
    filled_repository: Path, make_server: ServerFactory
) -> None:
    (filled_repository / "filled" / "config.toml").write_text("[inputs.max_length]\nmax = 4096\n")
    with pytest.raises(ModelLoadError, match=r"inputs\.max_length bounds an input the model does not have \(it takes"):
        make_server(filled_repository, strict=True)


def test_a_bound_on_an_input_of_no_numbers_fails_the_load(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_flag_model(), repository, "flag", 1)
    config = ModelConfig(inputs={"flag": InputBounds(max=1)})
    with pytest.raises(ModelLoadError, match=r"inputs\.flag bounds input flag: tensor\(bool\).*holds no numbers"):
        make_server(repository, models={"flag": config}, strict=True)


def test_a_bound_no_value_of_the_inputs_type_can_meet_fails_the_load(
    filled_repository: Path, make_server: ServerFactory
) -> None:
    (filled_repository / "filled" / "config.toml").write_text("[inputs.n]\nmin = 1e30\n")
    with pytest.raises(ModelLoadError, match=r"where no value of int64 \(-9223372036854775808\.\."):
        make_server(filled_repository, strict=True)


def test_the_status_of_a_version_shows_its_bounds(filled_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(filled_repository)
    assert version_status(server, "filled")["input_bounds"] == {"n": {"min": 0, "max": 4096}}


# -- the check, on every way ------------------------------------------------------------------------------


def test_values_within_the_bounds_are_served(filled_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(filled_repository)
    assert server.predict("filled", n(4096))["total"].tolist() == [4096.0]
    assert server.predict("filled", [0])["total"].tolist() == [0.0]


def test_a_value_outside_the_bounds_is_refused_before_the_run_on_the_short_way(
    filled_repository: Path, make_server: ServerFactory, forbid_full_way: Callable[[], None]
) -> None:
    server = make_server(filled_repository)
    server.predict("filled", n(3))  # (a process's first request adopts the runners, the full way)
    forbid_full_way()
    with pytest.raises(InvalidInputError) as raised:
        server.predict("filled", n(500_000_000))
    assert str(raised.value) == (
        "model 'filled' version 1: input 'n': 500000000 is above its max 4096 (bounded by the model's config, "
        "inputs.n); send values from 0 to 4096"
    )
    assert (raised.value.model, raised.value.version) == ("filled", 1)
    with pytest.raises(InvalidInputError, match=r"input 'n': -5 is below its min 0 .*send values from 0 to 4096"):
        server.predict("filled", [-5])  # (a list, as a JSON body gives it)
    status = version_status(server, "filled")
    assert status["batches_run"] == 1 and status["in_flight"] == 0  # neither ran
    assert status["latency_ms"]["errors"] == 0  # (refusals are not failed runs)
    assert server.predict("filled", n(7))["total"].tolist() == [7.0]


@pytest.mark.parametrize(
    "way",
    [
        pytest.param(lambda server, inputs: server.predict("filled", inputs, timeout_s=30), id="predict-deadline"),
        pytest.param(lambda server, inputs: server.submit("filled", inputs).result(timeout=30), id="submit"),
        pytest.param(lambda server, inputs: asyncio.run(server.apredict("filled", inputs)), id="apredict"),
        pytest.param(lambda server, inputs: next(iter(server.predict_many("filled", [inputs]))), id="predict_many"),
    ],
)
def test_a_value_outside_the_bounds_is_refused_before_the_run_on_every_other_way(
    filled_repository: Path, make_server: ServerFactory, way: Callable[[inprocserve.Server, Any], Any]
) -> None:
    server = make_server(filled_repository)
    assert way(server, n(5))["total"].tolist() == [5.0]
    with pytest.raises(InvalidInputError, match=r"^model 'filled' version 1: input 'n': 4097 is above its max 4096"):
        way(server, n(4097))
    assert version_status(server, "filled")["batches_run"] == 1  # the refused request never ran


def test_an_out_of_bounds_request_fails_alone_and_its_batch_mates_share_a_run(
    busy_repository: Path, make_server: ServerFactory
) -> None:
    # ``index`` picks a row of a table of 10: an 11th fails inside onnxruntime, and failed the merged batch
    config = ModelConfig(inputs={"index": InputBounds(min=0, max=9)})
    server = make_server(busy_repository, models={"busy": config})
    server.predict("busy", busy_inputs(1))
    blocker = occupy(server)
    before = version_status(server, "busy")["batches_run"]
    good = [server.submit("busy", busy_inputs(1, index=index, seed=index)) for index in (1, 2)]
    bad = server.submit("busy", busy_inputs(2, index=10))
    good.append(server.submit("busy", busy_inputs(1, index=3, seed=3)))
    with pytest.raises(InvalidInputError, match=r"input 'index': 2 values are above its max 9 \(the largest 10;"):
        bad.result(timeout=30)
    blocker.result(timeout=60)
    for index, future in zip((1, 2, 3), good, strict=True):
        assert future.result(timeout=30)["picked"].tolist() == [[2.0 * index, 2.0 * index + 1]]
    status = version_status(server, "busy")
    assert status["batches_run"] - before == 2  # the blocker's run, then the three good requests in one
    assert status["latency_ms"]["errors"] == 0


def test_an_out_of_bounds_task_on_an_event_loop_fails_alone(busy_repository: Path, make_server: ServerFactory) -> None:
    config = ModelConfig(inputs={"index": InputBounds(max=9)})
    server = make_server(busy_repository, models={"busy": config})

    async def main() -> list[Any]:
        await server.apredict("busy", busy_inputs(1))
        tasks = [server.apredict("busy", busy_inputs(1, index=index % 12, seed=index)) for index in range(12)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    answers = asyncio.run(main())
    for index, answer in enumerate(answers):
        if index < 10:
            assert answer["picked"].tolist() == [[2.0 * index, 2.0 * index + 1]]
        else:
            assert isinstance(answer, InvalidInputError)
            assert f"input 'index': {index} is above its max 9" in str(answer)
    assert version_status(server, "busy")["latency_ms"]["errors"] == 0


def test_bounds_on_a_float_input_leave_nan_to_the_nan_policy(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "strict", 1)
    bounds = {"x": InputBounds(min=-10, max=0.1)}
    server = make_server(
        repository,
        models={"scale": ModelConfig(inputs=bounds), "strict": ModelConfig(inputs=bounds, nan_policy="reject")},
    )
    nan = np.array([[np.nan, 0.1, -10.0, 1e-3]], np.float32)  # (0.1 as float32 is a little above 0.1: it passes)
    assert np.isnan(server.predict("scale", nan)["y"][0, 0])
    with pytest.raises(InvalidInputError, match=r"input 'x': 0\.5 is above its max 0\.1"):
        server.predict("scale", np.array([[np.nan, 0.5, 0.0, 0.0]], np.float32))  # (NaN does not hide it)
    with pytest.raises(InvalidInputError, match=r"input 'x': 2 values are below its min -10 \(the smallest -inf;"):
        server.predict("scale", np.array([[-np.inf, -11.0, 0.0, 0.0]]))  # (float64 values, converted first)
    with pytest.raises(InvalidInputError, match="nan_policy is 'reject'"):
        server.predict("strict", nan)
    assert server.predict("scale", np.full((3, 4), np.nan, np.float32))["y"].shape == (3, 4)


def test_a_lone_value_is_bounded_as_an_array_of_them_is(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0, features=1), repository, "one", 1)
    save_model(build_filled_model(), repository, "filled", 1)
    server = make_server(
        repository,
        models={
            "one": ModelConfig(inputs={"x": InputBounds(min=0)}),
            "filled": ModelConfig(inputs={"n": InputBounds(max=4.5)}),  # (an integer input's bound rounds inwards)
        },
    )
    assert np.isnan(server.predict("one", np.array([[np.nan]], np.float32))["y"][0, 0])
    with pytest.raises(InvalidInputError, match=r"input 'x': -inf is below its min 0 .*send values of at least 0$"):
        server.predict("one", [[-np.inf]])
    assert server.predict("filled", n(4))["total"].tolist() == [4.0]
    with pytest.raises(InvalidInputError, match=r"input 'n': 5 is above its max 4\.5 .*send values of at most 4\.5$"):
        server.predict("filled", n(5))


def test_values_past_both_bounds_are_all_named(repository: Path, make_server: ServerFactory) -> None:
    """A request with values below the min and above the max names both sides (it named the values below the
    min alone, so a client that fixed those was refused again for the others)."""
    save_model(build_scale_model(2.0, features=1), repository, "one", 1)
    server = make_server(repository, models={"one": ModelConfig(inputs={"x": InputBounds(min=0, max=10)})})
    with pytest.raises(InvalidInputError) as raised:
        server.predict("one", [[-1.0], [5.0], [11.0], [12.0]])
    assert str(raised.value) == (
        "model 'one' version 1: input 'x': -1.0 is below its min 0 and 2 values are above its max 10 (the largest "
        "12.0; bounded by the model's config, inputs.x); send values from 0 to 10"
    )
    with pytest.raises(InvalidInputError) as raised:
        server.predict("one", [[-1.0], [-3.0], [11.0]])
    assert "input 'x': 2 values are below its min 0 and 11.0 is above its max 10 (the smallest -3.0; " in str(
        raised.value
    )


def test_an_out_of_bounds_v2_request_is_a_400_naming_the_input(filled_repository: Path) -> None:
    from flask import Flask
    from inprocserve_flask import Inprocserve

    app = Flask(__name__)
    app.config.update(INPROCSERVE_REPOSITORY=str(filled_repository), INPROCSERVE_V2_PROTOCOL=True)
    Inprocserve(app)
    try:
        web = app.test_client()
        body = {"inputs": [{"name": "n", "shape": [1], "datatype": "INT64", "data": [500_000_000]}]}
        refused = web.post("/v2/models/filled/infer", json=body)
        body["inputs"][0]["data"] = [12]
        served = web.post("/v2/models/filled/infer", json=body)
    finally:
        Inprocserve.close(app)
    assert refused.status_code == 400, refused.json
    assert "input 'n': 500000000 is above its max 4096" in refused.json["error"]
    assert served.status_code == 200, served.json
    assert served.json["outputs"][0]["data"] == [12.0]


def test_a_model_without_bounds_validates_as_before(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository)
    signature = server._routes["scale"].default.signature
    assert type(signature) is inprocserve._signature.Signature and not signature.bounds
    assert version_status(server, "scale")["input_bounds"] == {}


def test_a_request_is_moved_only_to_a_version_that_validates_it_alike(
    repository: Path, make_server: ServerFactory
) -> None:
    """A waiting request whose version was unloaded (a hot reload) is moved to the version serving now only if
    that version would have let it through unchecked: one that bounds a value (or rejects NaN) where the first
    did not would run a request nobody checked against its bounds."""
    from inprocserve._inflight import _validated_alike

    save_model(build_scale_model(2.0), repository, "scale", 1)
    plain = make_server(repository)._registry.loaded["scale"][1]
    bounded_config = ModelConfig(inputs={"x": InputBounds(max=10)})
    bounded = make_server(repository, config=bounded_config)._registry.loaded["scale"][1]
    also_bounded = make_server(repository, config=bounded_config)._registry.loaded["scale"][1]
    rejecting = make_server(repository, config=ModelConfig(nan_policy="reject"))._registry.loaded["scale"][1]
    assert _validated_alike(plain, plain) and _validated_alike(bounded, also_bounded)
    assert not _validated_alike(bounded, plain)  # plain's request never met bounded's bound
    assert not _validated_alike(plain, bounded)  # (nor the other way: the bounds differ)
    assert not _validated_alike(rejecting, plain) and _validated_alike(plain, rejecting)
