"""The made-up requests of zeros that the library runs on its own (the thread probe at load, the quantize
comparison) reach a model whose dynamic inner axes need more than one step, as the warm-up's do.

A convolution of kernel 5 over a dynamic time axis fails on 1 step ("Invalid input shape: {1}"). Its warm-up
already tried longer axes; the thread probe did not (the model got every core, however short its run) and
``quantize`` refused to compare it at all.
"""

from __future__ import annotations

import functools
import itertools
import json
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest

from inprocserve import (
    InferenceError,
    InvalidInputError,
    ModelConfig,
    ModelLoadError,
    PaddingConfig,
    PoolConfig,
    _quantize,
)
from inprocserve.__main__ import main
from inprocserve._batch_ops import group_key
from inprocserve._quantize import quantize
from inprocserve._signature import Signature
from inprocserve.testing import save_model

from .conftest import ServerFactory

onnx = pytest.importorskip("onnx")


def build_time_convolution_model(kernel: int = 5) -> Any:
    """``x[batch, 4, time]`` through a convolution of 8 filters of ``kernel`` steps, the largest response of
    each over time: ``y[batch, 8]`` (an audio or sensor detector's shape)."""
    helper, tp = onnx.helper, onnx.TensorProto
    filters = np.random.default_rng(5).standard_normal((8, 4, kernel)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "filters"], ["responses"]),
            helper.make_node("ReduceMax", ["responses"], ["y"], axes=[2], keepdims=0),
        ],
        "time_convolution",
        [helper.make_tensor_value_info("x", tp.FLOAT, ["batch", 4, "time"])],
        [helper.make_tensor_value_info("y", tp.FLOAT, ["batch", 8])],
        [onnx.numpy_helper.from_array(filters, "filters")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture
def convolution(tmp_path: Path) -> Path:
    return save_model(build_time_convolution_model(), tmp_path / "models", "detector", 1)


def test_a_fast_convolution_over_time_gets_one_thread_like_any_fast_model(
    convolution: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two usable cores, whatever this host has: on one (a CI runner pinned or quota'd to one CPU) every model
    # gets one thread unprobed, and this test was skipped there.
    monkeypatch.setattr("inprocserve._ort_rules.usable_cores", lambda: 2)
    caplog.set_level("INFO", logger="inprocserve")
    server = make_server(convolution.parents[2], models={"detector": ModelConfig(pool=PoolConfig(size=1))})
    status = server.status()["models"]["detector"]["versions"]["1"]
    assert status["error"] is None
    # A run of a few microseconds: one thread (a second would cost a wake-up per operator). The probe's run of
    # one step failed and the model got the whole budget.
    assert status["intra_op_threads"] == 1
    assert any(
        "run takes" in record.getMessage() and "using 1 intra-op thread" in record.getMessage()
        for record in caplog.records
    )
    x = np.random.default_rng(0).standard_normal((2, 4, 9)).astype(np.float32)
    assert server.predict("detector", x)["y"].shape == (2, 8)


def test_quantize_compares_a_convolution_over_time_on_steps_it_runs_on(
    convolution: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "detector-int8.onnx"
    assert main(["quantize", "--json", "--seconds", "0.02", "--sample", "32", str(convolution), str(target)]) == 0
    out, err = capfd.readouterr()
    report = json.loads(out)
    assert target.is_file()
    # compared and timed with 16 steps, the first of 1, 2, 16, 64 that a kernel of 5 runs on
    assert report["sample_shapes"] == {"x": [32, 4, 16]}
    assert report["sample_rows"] == 32
    assert set(report["speed"]) == {"batch_1", "batch_64"}
    assert 0 <= report["accuracy"]["y"]["max_abs_diff"] < 1.0
    assert "onnxruntime" not in err  # (the failed tries print no error line of the runtime's)

    assert main(["quantize", "--seconds", "0.02", "--sample", "8", str(convolution), str(target)]) == 0
    assert "compared on made-up inputs (random floats, zeros elsewhere): x [8, 4, 16]" in capfd.readouterr().out


def test_quantize_leaves_convolutions_float32_where_onnxruntime_has_no_int8_convolution(
    convolution: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """onnxruntime before int8 ConvInteger kernels (1.17.3, the floor) could not load what its quantizer makes of
    a Conv: quantize failed for any convolutional network (the tests above failed on the oldest pins). There
    the convolutions stay float32, and the report and the command's output say so."""
    monkeypatch.setattr(_quantize, "int8_convolutions_load", lambda: False)
    target = tmp_path / "detector-int8.onnx"
    report = quantize(convolution, target, sample_rows=8, seconds=0.01)
    assert report["left_in_float32"] == {"Conv": _quantize.LEFT_IN_FLOAT32_REASON}
    op_types = {node.op_type for node in onnx.load(str(target)).graph.node}
    assert "Conv" in op_types and "ConvInteger" not in op_types, op_types
    assert report["accuracy"]["y"]["max_abs_diff"] < 1e-5  # (nothing else in it to quantize)
    assert main(["quantize", "--seconds", "0.01", "--sample", "8", str(convolution), str(target)]) == 0
    assert "not quantized: Conv (this onnxruntime has no ConvInteger kernel for int8" in capfd.readouterr().out


def test_the_int8_convolution_probe_says_what_this_onnxruntime_loads(
    convolution: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whichever onnxruntime is installed: where the probe says yes, a quantized Conv is a ConvInteger that loads
    # and the report leaves nothing float32; where it says no, quantizing the Conv anyway fails as it did.
    target = tmp_path / "detector-int8.onnx"
    if _quantize.int8_convolutions_load():
        assert quantize(convolution, target, sample_rows=8, seconds=0.01)["left_in_float32"] == {}
        assert "ConvInteger" in {node.op_type for node in onnx.load(str(target)).graph.node}
    else:
        monkeypatch.setattr(_quantize, "int8_convolutions_load", lambda: True)
        with pytest.raises(ModelLoadError, match=r"Could not find an implementation for ConvInteger"):
            quantize(convolution, target, sample_rows=8, seconds=0.01)
        assert not target.exists()


class SoftTimeLimitExceeded(Exception):
    """As Celery's: an Exception, raised by the signal handler of a task's soft time limit."""


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs POSIX signals")
@pytest.mark.parametrize("stopped_run", [1, 4], ids=["a-try-of-a-length", "the-comparison-run"])
def test_a_task_time_limit_during_quantize_s_runs_stops_the_task(
    convolution: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopped_run: int
) -> None:
    # The first run tries 1 step (that try failing is no error: 2, then 16 follow, which runs), the fourth is
    # the compared original's. Taken for the model's failure, the time limit was no error at all (the next
    # length was tried), or a ModelLoadError.
    run, runs = onnxruntime.InferenceSession.run, itertools.count(1)

    def stopped_once(session: Any, *args: Any, **kwargs: Any) -> Any:
        if next(runs) == stopped_run:
            signal.raise_signal(signal.SIGUSR1)
        return run(session, *args, **kwargs)

    def soft_timeout_sighandler(signum: int, frame: Any) -> None:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", stopped_once)
    previous = signal.signal(signal.SIGUSR1, soft_timeout_sighandler)
    try:
        with pytest.raises(SoftTimeLimitExceeded):
            quantize(convolution, tmp_path / "int8.onnx", sample_rows=4, seconds=0.01)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert not (tmp_path / "int8.onnx").exists()


# -- inputs' lengths that the model needs alike, named apart in the file -----------------------------------


def _save(
    repository: Path, name: str, nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: Any = ()
) -> None:
    helper = onnx.helper
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save_model(model, repository, name, 1)


def _floats(name: str, *shape: Any) -> Any:
    return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape))


@pytest.fixture(scope="module")
def sequences(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models whose inputs' sequence axes are named apart, as a legacy ``torch.onnx.export`` given
    ``dynamic_axes`` as lists names them (``input_ids_dynamic_axes_2``, ``attention_mask_dynamic_axes_2``)."""
    repository = tmp_path_factory.mktemp("sequences")
    make = onnx.helper.make_node
    # token ids times their mask: one length
    _save(
        repository,
        "masked",
        [make("Mul", ["ids", "mask"], ["y"])],
        [
            _floats("ids", "ids_dynamic_axes_1", "ids_dynamic_axes_2"),
            _floats("mask", "mask_dynamic_axes_1", "mask_dynamic_axes_2"),
        ],
        [_floats("y", "y_dynamic_axes_1", "y_dynamic_axes_2")],
    )
    # a query and its mask, a document and its mask: two lengths, each shared by a pair
    _save(
        repository,
        "query_document",
        [make("Mul", ["query", "query_mask"], ["q"]), make("Mul", ["document", "document_mask"], ["d"])],
        [
            _floats("query", "b1", "lq"),
            _floats("query_mask", "b2", "lqm"),
            _floats("document", "b3", "ld"),
            _floats("document_mask", "b4", "ldm"),
        ],
        [_floats("q", "b5", "lq"), _floats("d", "b6", "ld")],
    )
    # the first `len(b)` steps of a, plus b: a may be longer than b, not shorter (not one length)
    shape = [make("Shape", ["b"], ["b_length"], start=1, end=2)]
    starts = onnx.numpy_helper.from_array(np.array([0], np.int64), "starts")
    axes = onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")
    _save(
        repository,
        "prefix",
        [*shape, make("Slice", ["a", "starts", "b_length", "axes"], ["head"]), make("Add", ["head", "b"], ["y"])],
        [_floats("a", "batch", "la"), _floats("b", "batch", "lb")],
        [_floats("y", "batch", "lb")],
        [starts, axes],
    )
    # an image's height and width: two lengths, free of each other
    _save(
        repository,
        "image",
        [make("ReduceSum", ["x", "spatial"], ["y"], keepdims=0)],
        [_floats("x", "batch", 3, "height", "width")],
        [_floats("y", "batch", 3)],
        [onnx.numpy_helper.from_array(np.array([2, 3], np.int64), "spatial")],
    )
    # ids and mask side by side, [batch, 2, length]: one length, and a mask of 1 step does not broadcast
    unsqueeze = onnx.numpy_helper.from_array(np.array([1], np.int64), "new_axis")
    _save(
        repository,
        "stacked",
        [
            make("Unsqueeze", ["ids", "new_axis"], ["ids_row"]),
            make("Unsqueeze", ["mask", "new_axis"], ["mask_row"]),
            make("Concat", ["ids_row", "mask_row"], ["y"], axis=1),
        ],
        [_floats("ids", "ids_dynamic_axes_1", "ids_dynamic_axes_2"), _floats("mask", "mask_batch", "mask_length")],
        [_floats("y", "batch", 2, "length")],
        [unsqueeze],
    )
    # a and b joined, read as pairs: their lengths need only an even sum (2 and 4, 3 and 5), not to be alike
    pairs = onnx.numpy_helper.from_array(np.array([0, 2, -1], np.int64), "pairs")
    _save(
        repository,
        "pairs",
        [make("Concat", ["a", "b"], ["joined"], axis=1), make("Reshape", ["joined", "pairs"], ["y"])],
        [_floats("a", "batch", "la"), _floats("b", "batch", "lb")],
        [_floats("y", "batch", 2, "half")],
        [pairs],
    )
    # n inputs summed, each its length named apart: n lengths of one group
    for count in (4, 5, 6):
        names = [f"x{index}" for index in range(count)]
        _save(
            repository,
            f"sum{count}",
            [make("Sum", names, ["y"])],
            [_floats(name, f"{name}_batch", f"{name}_length") for name in names],
            [_floats("y", "batch", "length")],
        )
    return repository


def test_sequence_axes_the_model_needs_alike_refuse_a_request_whose_lengths_differ(
    sequences: Path, make_server: ServerFactory
) -> None:
    # before, onnxruntime found them apart: "Attempting to broadcast an axis", an InferenceError (a 500)
    server = make_server(sequences)
    ids, mask = np.ones((2, 5), np.float32), np.ones((2, 4), np.float32)
    with pytest.raises(InvalidInputError, match=r"must be of one length .*'ids' axis 1 = 5, 'mask' axis 1 = 4"):
        server.predict("masked", {"ids": ids, "mask": mask})
    np.testing.assert_array_equal(server.predict("masked", {"ids": ids, "mask": 2 * ids})["y"], 2 * ids)
    futures = [
        server.submit("masked", {"ids": np.full((1, n), n, np.float32), "mask": np.ones((1, n), np.float32)})
        for n in (2, 3, 3, 7)
    ]
    assert [future.result(timeout=30)["y"].tolist() for future in futures] == [[[n] * n] for n in (2, 3, 3, 7)]
    status = server.status()["models"]["masked"]["versions"]["1"]
    assert [spec["shape"] for spec in status["signature"]["inputs"]] == [
        ["ids_dynamic_axes_1", "ids_dynamic_axes_2"],
        ["mask_dynamic_axes_1", "mask_dynamic_axes_2"],
    ]  # (as the file names them)


def test_each_pair_of_lengths_is_tied_apart_from_the_other(sequences: Path, make_server: ServerFactory) -> None:
    server = make_server(sequences)
    ones = functools.partial(np.ones, dtype=np.float32)
    inputs = {
        "query": ones((1, 3)),
        "query_mask": ones((1, 3)),
        "document": ones((1, 8)),
        "document_mask": ones((1, 8)),
    }
    answer = server.predict("query_document", inputs)  # a query and a document of their own lengths
    assert answer["q"].shape == (1, 3) and answer["d"].shape == (1, 8)
    with pytest.raises(InvalidInputError, match=r"'document' axis 1 = 8, 'document_mask' axis 1 = 7"):
        server.predict("query_document", {**inputs, "document_mask": ones((1, 7))})
    with pytest.raises(InvalidInputError, match=r"'query' axis 1 = 3, 'query_mask' axis 1 = 4"):
        server.predict("query_document", {**inputs, "query_mask": ones((1, 4))})


def test_lengths_that_need_not_be_alike_are_not_tied(sequences: Path, make_server: ServerFactory) -> None:
    server = make_server(sequences)
    # a longer than b runs (only a shorter one fails, inside onnxruntime): not refused by the library
    answer = server.predict("prefix", {"a": np.arange(5, dtype=np.float32)[None], "b": np.ones((1, 3), np.float32)})
    assert answer["y"].tolist() == [[1.0, 2.0, 3.0]]
    assert server.predict("image", np.ones((2, 3, 4, 9), np.float32))["y"].tolist() == [[36.0] * 3] * 2


def test_a_mask_of_one_step_is_answered_where_the_model_broadcasts_it(
    sequences: Path, make_server: ServerFactory
) -> None:
    server = make_server(sequences)
    ids = np.arange(10, dtype=np.float32).reshape(2, 5)
    # one step of mask over every token: onnxruntime broadcasts it, as it did before the lengths were tied
    answer = server.predict("masked", {"ids": ids, "mask": np.full((2, 1), 2, np.float32)})
    np.testing.assert_array_equal(answer["y"], 2 * ids)
    with pytest.raises(InvalidInputError, match=r"'ids' axis 1 and 'mask' axis 1 may also be 1\) .*= 5, .*= 4"):
        server.predict("masked", {"ids": ids, "mask": np.ones((2, 4), np.float32)})
    # where the model cannot broadcast it, a mask of 1 step is refused like any other length, and no 1 is offered
    with pytest.raises(InvalidInputError, match=r"of one length \(at load .*'ids' axis 1 = 5, 'mask' axis 1 = 1$"):
        server.predict("stacked", {"ids": ids, "mask": np.ones((2, 1), np.float32)})
    assert server.predict("stacked", {"ids": ids, "mask": ids})["y"].shape == (2, 2, 5)


def test_lengths_that_need_only_an_even_sum_are_not_tied(sequences: Path, make_server: ServerFactory) -> None:
    # one step longer or shorter alone makes the sum odd and fails, as a tie would; two steps longer runs
    server = make_server(sequences)
    answer = server.predict("pairs", {"a": np.ones((1, 3), np.float32), "b": np.zeros((1, 5), np.float32)})
    assert answer["y"].tolist() == [[[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]


def _tie_runs(monkeypatch: pytest.MonkeyPatch) -> list[dict[tuple[str, int], int]]:
    """The lengths of each made-up input the search for tied lengths builds (each is one run of the model)."""
    built: list[dict[tuple[str, int], int]] = []
    synthesize = Signature.synthesize

    def counted(self: Signature, rows: int, inner_size: int = 1, sizes: Any = None, **options: Any) -> Any:
        if sizes is not None:
            built.append(dict(sizes))
        return synthesize(self, rows, inner_size, sizes, **options)

    monkeypatch.setattr(Signature, "synthesize", counted)
    return built


@pytest.mark.parametrize(
    ("model", "runs"), [("masked", 12), ("query_document", 23), ("sum4", 26), ("sum5", 38), ("sum6", 40)]
)
def test_the_search_for_tied_lengths_makes_at_most_40_runs(
    sequences: Path,
    tmp_path: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    runs: int,
) -> None:
    shutil.copytree(sequences / model, tmp_path / model)  # (a repository of this model alone)
    built = _tie_runs(monkeypatch)
    server = make_server(tmp_path)
    server.predict(model, {spec["name"]: np.ones((1, 3), np.float32) for spec in _inputs(server, model)})
    assert len(built) == runs  # (the figures _MOST_TIE_RUNS's docstring gives)


def test_lengths_past_the_search_s_runs_are_left_free(
    sequences: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="inprocserve")
    server = make_server(sequences)
    ones = {f"x{index}": np.ones((1, 3), np.float32) for index in range(5)}
    with pytest.raises(InvalidInputError, match="must be of one length"):
        server.predict("sum5", {**ones, "x4": np.ones((1, 4), np.float32)})
    # six lengths of one group take more runs than a load may make: free, as the file names them (the
    # mismatch fails in the model), and the log says so
    with pytest.raises(InferenceError):
        server.predict("sum6", {**ones, "x5": np.ones((1, 4), np.float32)})
    assert any(
        "40 one-row runs did not tell" in record.getMessage() and "'sum6'" in record.getMessage()
        for record in caplog.records
    )


def _inputs(server: Any, model: str) -> list[dict[str, Any]]:
    return server.status()["models"][model]["versions"]["1"]["signature"]["inputs"]  # type: ignore[no-any-return]


def test_a_padded_batch_never_leaves_a_one_step_mask_unpadded(tmp_path: Path, make_server: ServerFactory) -> None:
    # Attention-style masking, padded: a request whose mask is one step (broadcast over its ids) was padded
    # beside a longer request as the ids grew and the mask did not, so the padded steps went unmasked and
    # its answer followed its companion's length (0.2289 for each token instead of 0.25)
    make = onnx.helper.make_node
    constants = [
        onnx.numpy_helper.from_array(np.array(1, np.float32), "one"),
        onnx.numpy_helper.from_array(np.array(1e9, np.float32), "big"),
    ]
    _save(
        tmp_path,
        "attention",
        [
            make("Sub", ["mask", "one"], ["masked_off"]),
            make("Mul", ["masked_off", "big"], ["penalty"]),
            make("Add", ["ids", "penalty"], ["scores"]),
            make("Softmax", ["scores"], ["y"], axis=1),
        ],
        [_floats("ids", "batch", "ids_length"), _floats("mask", "batch", "mask_length")],
        [_floats("y", "batch", "ids_length")],
        constants,
    )
    (tmp_path / "attention" / "config.toml").write_text(
        "[batching]\nmax_delay_s = 0.2\n"
        "[batching.padding]\ninputs = { ids = 1, mask = 1 }\noutputs = { y = 1 }\nvalue = 0\n"
    )
    server = make_server(tmp_path)
    short = {"ids": np.ones((1, 4), np.float32), "mask": np.ones((1, 1), np.float32)}
    longer = {"ids": np.ones((1, 5), np.float32), "mask": np.ones((1, 1), np.float32)}
    assert server.predict("attention", short)["y"].tolist() == [[0.25] * 4]
    for _ in range(10):
        beside, alone = server.submit("attention", longer), server.submit("attention", short)
        np.testing.assert_allclose(alone.result(timeout=30)["y"], [[0.25] * 4])
        np.testing.assert_allclose(beside.result(timeout=30)["y"], [[0.2] * 5])
    # full-length masks still share padded batches; a one-step mask only requests of its exact shapes
    padding = PaddingConfig(inputs={"ids": 1, "mask": 1})
    ones = functools.partial(np.ones, dtype=np.float32)
    assert group_key({"ids": ones((1, 4)), "mask": ones((1, 4))}, padding) == group_key(
        {"ids": ones((1, 5)), "mask": ones((1, 5))}, padding
    )
    assert group_key(short, padding) != group_key(longer, padding)
    assert group_key(short, padding) == group_key({"ids": ones((2, 4)), "mask": ones((2, 1))}, padding)


@pytest.mark.parametrize("warmup", ["enabled = false", 'inputs_file = "warmup.npz"'])
def test_lengths_are_tied_when_the_warm_up_made_up_no_request(
    warmup: str, tmp_path: Path, make_server: ServerFactory
) -> None:
    # the search began at 3 steps, one past the warm-up's made-up length; with no warm-up (or one read from a
    # file) a convolution of kernel 5 failed there, the search stopped without a word, and lengths 8 and 9 failed
    # inside onnxruntime (an InferenceError: a web view's 500)
    make = onnx.helper.make_node
    _save(
        tmp_path,
        "detector",
        [
            make("Mul", ["x", "mask"], ["masked"]),
            make("Conv", ["masked", "filters"], ["responses"]),
            make("ReduceMax", ["responses"], ["y"], axes=[2], keepdims=0),
        ],
        [_floats("x", "batch", 1, "x_length"), _floats("mask", "mask_batch", 1, "mask_length")],
        [_floats("y", "batch", 2)],
        [onnx.numpy_helper.from_array(np.ones((2, 1, 5), np.float32), "filters")],
    )
    (tmp_path / "detector" / "config.toml").write_text(f"[warmup]\n{warmup}\n")
    steps = np.ones((1, 1, 8), np.float32)
    np.savez(tmp_path / "detector" / "warmup.npz", x=steps, mask=steps)
    server = make_server(tmp_path)
    assert server.predict("detector", {"x": steps, "mask": steps})["y"].tolist() == [[5.0, 5.0]]
    with pytest.raises(InvalidInputError, match=r"must be of one length .*'x' axis 2 = 8, 'mask' axis 2 = 9"):
        server.predict("detector", {"x": steps, "mask": np.ones((1, 1, 9), np.float32)})
