"""How a run that onnxruntime fails reaches the client: its words without its build's source paths, and an
allocation it could not make as a typed error that says what to bound (``_ort_rules.translate_run_error``)."""

from __future__ import annotations

import json
import resource
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import inprocserve
from inprocserve import ModelConfig, _ort_rules, v2, web
from inprocserve.testing import save_model

from .conftest import ServerFactory, count_batch_runs, run_python, wait_until
from .test_shadow_close import counting_loop_body


def build_reshape_model() -> onnx.ModelProto:
    """``y = reshape(x, shape)``, ``x`` float ``[batch, 6]`` and ``shape`` the two dimensions the caller wants:
    a shape of another size fails the run inside onnxruntime (its Reshape kernel's check)."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["p", "q"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def infer(endpoints: v2.Endpoints, model: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    data = json.dumps(body).encode()
    position = 0

    def read(size: int) -> bytes:
        nonlocal position
        chunk = data[position : position + size]
        position += len(chunk)
        return chunk

    response = endpoints.handle("POST", f"/v2/models/{model}/infer", {"Content-Type": "application/json"}, read)
    return response.status, json.loads(response.body)


def test_a_failed_run_tells_the_client_what_failed_without_onnxruntimes_source_paths(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_reshape_model(), repository, "reshape", 1)
    server = make_server(repository)
    endpoints = v2.Endpoints(lambda: server)
    status, document = infer(
        endpoints,
        "reshape",
        {
            "inputs": [
                {"name": "x", "shape": [1, 6], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]},
                {"name": "shape", "shape": [2], "datatype": "INT64", "data": [1, 7]},
            ]
        },
    )
    assert status == 500
    message = str(document["error"])
    assert "cannot be reshaped to the requested shape. Input shape:{1,6}, requested shape:{1,7}" in message
    assert "onnxruntime_src" not in message and ".h:" not in message and "::" not in message, message
    # the library's own callers read the same words
    try:
        server.predict("reshape", {"x": np.ones((1, 6), np.float32), "shape": np.array([1, 7], np.int64)})
    except inprocserve.InferenceError as exc:
        assert "onnxruntime_src" not in str(exc) and str(exc).endswith("requested shape:{1,7}"), str(exc)
    else:
        raise AssertionError("the run did not fail")


def build_filled_loop_model() -> onnx.ModelProto:
    """``y = x``, after a Loop of ``max(k)`` steps and a ``ConstantOfShape`` of ``max(n)`` float ones (``x``
    float[batch, 4], ``n`` and ``k`` int64[batch, 1]): a batch's run allocates ``4 * max(n)`` bytes, sizes a
    client chooses, and a large ``k`` keeps the session busy while other requests queue."""
    body = counting_loop_body()
    nodes = [
        helper.make_node("ReduceMax", ["k"], ["steps"], keepdims=0),
        helper.make_node("Loop", ["steps", "true", "zero"], ["looped"], body=body),
        helper.make_node("ReduceMax", ["n"], ["size"], keepdims=0),
        helper.make_node("Unsqueeze", ["size", "axis"], ["shape"]),
        helper.make_node(
            "ConstantOfShape", ["shape"], ["filled"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
        ),
        helper.make_node("ReduceSum", ["filled"], ["total"], keepdims=0),
        helper.make_node("Add", ["total", "looped"], ["both"]),
        helper.make_node("Mul", ["both", "zero"], ["nothing"]),
        helper.make_node("Add", ["x", "nothing"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "filled_loop",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("n", TensorProto.INT64, ["batch", 1]),
            helper.make_tensor_value_info("k", TensorProto.INT64, ["batch", 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [
            numpy_helper.from_array(np.array(True), "true"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array([0], np.int64), "axis"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def filled(size: int, *, steps: int = 1, value: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "x": np.full((1, 4), value, np.float32),
        "n": np.array([[size]], np.int64),
        "k": np.array([[steps]], np.int64),
    }


@pytest.fixture
def address_space_capped() -> Iterator[int]:
    """While the test runs, its process may map only 8 GiB more than it has (``ulimit -v``; the cap is yielded).

    A host that overcommits memory (``vm.overcommit_memory=1``, some sandboxes) grants an allocation of 4 TiB,
    and onnxruntime then fills it: the test process takes the machine's memory, stuck inside onnxruntime where
    no test timeout reaches it (a CI run sat there until its own limit). Under the cap the allocation fails on
    every host, as it does where the kernel refuses it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as status:
        in_use = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
    cap = in_use + 8 * 2**30
    if soft != resource.RLIM_INFINITY:
        cap = min(cap, soft)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield cap
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_an_allocation_that_fails_through_io_binding_is_refused_without_a_second_run(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, address_space_capped: int
) -> None:
    """I/O binding's run words every failure alike ("Error in execution: ..."), so a failed one is run again
    without the binding for onnxruntime's typed error; an allocation that failed says so in those words already,
    and its second run only asked for the memory again (the same failure, twice the time)."""
    from onnxruntime.capi import onnxruntime_pybind11_state

    save_model(build_filled_loop_model(), repository, "filled", 1)
    pool = inprocserve.PoolConfig(io_binding=True)
    server = make_server(repository, config=ModelConfig(pool=pool, warmup=inprocserve.WarmupConfig(enabled=False)))
    np.testing.assert_array_equal(server.predict("filled", filled(10))["y"], np.ones((1, 4)))
    plain_runs: list[int] = []
    run = onnxruntime_pybind11_state.InferenceSession.run

    def counted(self: object, *args: object, **kwargs: object) -> object:
        plain_runs.append(1)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(onnxruntime_pybind11_state.InferenceSession, "run", counted)
    with pytest.raises(inprocserve.InputTooLargeError, match="bound the input that sets this size"):
        server.predict("filled", filled(2**40))
    assert plain_runs == []
    np.testing.assert_array_equal(server.predict("filled", filled(20, value=3.0))["y"], np.full((1, 4), 3.0))


def test_a_run_that_asks_for_more_memory_than_the_host_has_is_the_clients_error_naming_what_to_bound(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, address_space_capped: int
) -> None:
    """A request whose input makes onnxruntime allocate 4 TiB was a 500 InferenceError quoting onnxruntime's
    arena; it is an InputTooLargeError (a 400) that says how much it asked and which input to bound. Its
    batch-mates are answered, and the process serves on."""
    save_model(build_filled_loop_model(), repository, "filled", 1)
    server = make_server(repository, config=ModelConfig(warmup=inprocserve.WarmupConfig(enabled=False)))
    runs = count_batch_runs(monkeypatch)
    blocker = server.submit("filled", filled(1, steps=10**10), timeout_s=2.0)  # (busy while the batch queues)
    wait_until(lambda: runs == [1], timeout_s=5)
    batch = [server.submit("filled", filled(size, value=index)) for index, size in enumerate((10, 2**40, 20))]
    with pytest.raises(inprocserve.DeadlineExceededError):
        blocker.result(timeout=30)
    wait_until(lambda: all(future.done() for future in batch), timeout_s=30)
    assert runs[1] == 3  # the three were merged, and the run failed: bisected
    with pytest.raises(inprocserve.InputTooLargeError) as caught:
        batch[1].result()
    message = str(caught.value)
    assert message.startswith("model 'filled' version 1: the request asks onnxruntime for 4398046511104 bytes")
    assert "ConstantOfShape" in message and "[inputs.n] max, [inputs.k] max" in message, message
    assert isinstance(caught.value, inprocserve.InvalidInputError)
    assert web.http_status(caught.value) == 400
    for index in (0, 2):
        np.testing.assert_array_equal(batch[index].result()["y"], np.full((1, 4), index, np.float32))
    np.testing.assert_array_equal(server.predict("filled", filled(1000, value=7.0))["y"], np.full((1, 4), 7.0))
    with pytest.raises(inprocserve.InputTooLargeError, match="more bytes than any memory holds"):
        server.predict("filled", filled(2**62))  # (a size past 64 bits of bytes)


def test_a_request_whose_values_make_a_negative_size_is_the_clients_error_naming_what_to_bound(
    repository: Path, make_server: ServerFactory
) -> None:
    """A count of -1 for a ConstantOfShape failed inside onnxruntime ("Tensor shape.Size() must be >= 0"): a
    500 InferenceError, counted against the server and logged, for the client's value. A 400 that says to send
    sizes of 0 or more and which inputs to bound; the next request is answered."""
    save_model(build_filled_loop_model(), repository, "filled", 1)
    server = make_server(repository, config=ModelConfig(warmup=inprocserve.WarmupConfig(enabled=False)))
    for size in (-1, -(2**40)):
        with pytest.raises(inprocserve.InvalidInputError) as caught:
            server.predict("filled", filled(size))
        message = str(caught.value)
        assert message.startswith(
            "model 'filled' version 1: the request's values make a tensor of negative size for its "
            "ConstantOfShape node; send sizes of 0 or more"
        ), message
        assert message.endswith("([inputs.n] min = 0)"), message  # (k, a loop's 1 step, is not the one)
        assert web.http_status(caught.value) == 400
    np.testing.assert_array_equal(server.predict("filled", filled(10, value=3.0))["y"], np.full((1, 4), 3.0))


# onnxruntime's message for a tensor of negative size, then for a size past 64 bits of bytes, as session.run
# raises them (its build's source places, which translate_run_error drops, cut short): 1.17.3, the floor of
# pyproject.toml, and 1.32, which say both otherwise.
ORT_1_17_3_WORDS = (
    "Non-zero status code returned while running ConstantOfShape node. Name:'' Status Message: "
    "/onnxruntime_src/onnxruntime/core/framework/op_kernel.cc:83 virtual OrtValue* onnxruntime::OpKernelContext::"
    "OutputMLValue(int, const onnxruntime::TensorShape&) status.IsOK() was false. {}"
)
ORT_1_32_WORDS = (
    "Non-zero status code returned while running ConstantOfShape node. Name:'' Status Message: "
    "/onnxruntime_src/onnxruntime/core/framework/op_kernel.cc:87 virtual OrtValue* onnxruntime::OpKernelContext::"
    "OutputMLValue(int, const onnxruntime::TensorShape&) [ONNXRuntimeError] : 1 : FAIL : {}"
)
NEGATIVE_SIZE_WORDS = ("Tensor shape cannot contain any negative value", "shape.Size() must be >= 0")


@pytest.mark.parametrize(
    "text",
    [
        ORT_1_17_3_WORDS.format("Tensor shape cannot contain any negative value"),
        ORT_1_32_WORDS.format("tensor.cc:57 CalculateTensorStorageSize Tensor shape.Size() must be >= 0"),
    ],
    ids=["onnxruntime-1.17.3", "onnxruntime-1.32"],
)
def test_onnxruntimes_words_in_each_release_for_a_negative_size_are_the_clients_error(text: str) -> None:
    """Matched by 1.32's words alone, a -1 a client sent was a 500 InferenceError on onnxruntime 1.17.3, the
    floor (tests/test_run_failures.py failed there: ``make oldest`` with the core suite). Both releases' words
    are read here, whichever onnxruntime is installed."""
    error = _ort_rules.translate_run_error(
        RuntimeError(text), model="filled", version=1, sizing_inputs=("n",), negative_inputs=("n",)
    )
    assert type(error) is inprocserve.InvalidInputError, error
    assert str(error).endswith("([inputs.n] min = 0)"), error
    assert "for its ConstantOfShape node" in str(error), error


@pytest.mark.parametrize(
    "text",
    [
        ORT_1_17_3_WORDS.format("size overflow"),
        ORT_1_32_WORDS.format("Calculation for Tensor storage size overflowed"),
    ],
    ids=["onnxruntime-1.17.3", "onnxruntime-1.32"],
)
def test_onnxruntimes_words_in_each_release_for_a_size_past_64_bits_are_the_clients_error(text: str) -> None:
    """As above, for a request that asks for 2**62 floats: a 500 on 1.17.3, an InputTooLargeError (400) now."""
    error = _ort_rules.translate_run_error(RuntimeError(text), model="filled", version=1, sizing_inputs=("n",))
    assert type(error) is inprocserve.InputTooLargeError, error
    assert "more bytes than any memory holds" in str(error) and "[inputs.n] max" in str(error), error


def build_wrong_branch_model() -> onnx.ModelProto:
    """``y = x`` plus the sum of zeros of a length the model gets wrong once any value of ``x`` (float[batch,
    4]) passes 0.5: that branch fills ``width - 10`` zeros (-6), a model's bug that its warm-up's zeros never
    reach."""
    zeros = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])
    wrong = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Slice", ["shape", "one", "two"], ["width"]),
            helper.make_node("Sub", ["width", "ten"], ["length"]),
            helper.make_node("ConstantOfShape", ["length"], ["filled"], value=zeros),
        ],
        "wrong",
        [],
        [helper.make_tensor_value_info("filled", TensorProto.FLOAT, None)],
    )
    right = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["two"], ["filled_right"], value=zeros)],
        "right",
        [],
        [helper.make_tensor_value_info("filled_right", TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["x"], ["largest"], keepdims=0),
            helper.make_node("Greater", ["largest", "half"], ["taken"]),
            helper.make_node("If", ["taken"], ["filled_any"], then_branch=wrong, else_branch=right),
            helper.make_node("ReduceSum", ["filled_any"], ["total"], keepdims=0),
            helper.make_node("Add", ["x", "total"], ["y"]),
        ],
        "wrong_branch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
            numpy_helper.from_array(np.array([2], np.int64), "two"),
            numpy_helper.from_array(np.array([10], np.int64), "ten"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_a_negative_size_the_model_computes_wrong_is_the_servers_error_not_the_clients(
    repository: Path, make_server: ServerFactory
) -> None:
    """A model whose own arithmetic makes a negative size (a branch its warm-up's zeros never took) failed every
    such request with a 400 that blamed the request's values and said to bound ``[inputs.NAME] min = 0``, for
    a model with no integer input to bound: the model's bug, not counted against the server. A tensor of
    negative size is the client's only where it sent a negative integer."""
    save_model(build_wrong_branch_model(), repository, "wrong", 1)
    server = make_server(repository)
    np.testing.assert_array_equal(server.predict("wrong", {"x": np.zeros((1, 4), np.float32)})["y"], np.zeros((1, 4)))
    with pytest.raises(inprocserve.InferenceError) as caught:
        server.predict("wrong", {"x": np.ones((1, 4), np.float32)})
    assert type(caught.value) is inprocserve.InferenceError, str(caught.value)
    # (onnxruntime's own words, which 1.17.3 says otherwise: test_onnxruntimes_words_in_each_release_...)
    assert any(words in str(caught.value) for words in NEGATIVE_SIZE_WORDS), str(caught.value)
    status, document = infer(
        v2.Endpoints(lambda: server),
        "wrong",
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]},
    )
    assert status == 500, document


SHORT_OF_MEMORY = """
import json, resource, sys, tempfile
from pathlib import Path
import numpy as np
import inprocserve
from inprocserve.testing import save_model
from tests.test_run_failures import build_filled_loop_model, filled

repository = Path(tempfile.mkdtemp())
save_model(build_filled_loop_model(), repository, "filled", 1)
arena = sys.argv[1] == "arena"
pool = inprocserve.PoolConfig(memory_arena=arena)
server = inprocserve.Server(repository, config=inprocserve.ModelConfig(pool=pool))
server.predict("filled", filled(10))
in_use = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))
cap, hard = in_use + 2**29, resource.getrlimit(resource.RLIMIT_AS)[1]  # 512 MiB left to take
# (the hard limit kept: where the host set one, ulimit -v, only root may raise it again)
resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
answers = []
try:
    server.predict("filled", filled(5 * 2**25))  # 640 MiB: less than the process may hold, more than is left
except inprocserve.InprocserveError as exc:
    answers.append([type(exc).__name__, str(exc)])
answers.append(server.predict("filled", filled(1000, value=5.0))["y"].tolist())
server.close()
print(json.dumps(answers))
"""


@pytest.mark.parametrize("arena", ["arena", "no arena"])
def test_a_run_that_a_host_short_of_memory_cannot_allocate_is_an_out_of_memory_error(arena: str) -> None:
    """A request for 640 MiB in a process that may hold more than that, but has only 512 MiB left to take:
    the allocation fails for the host's want of memory, not for a size no host could give, so an
    OutOfMemoryError (a 500) that says so; it was a generic InferenceError. The process serves on."""
    done = run_python(SHORT_OF_MEMORY, arena)
    assert done.returncode == 0, done.stderr[-3000:]
    (kind, message), after = json.loads(done.stdout.strip().splitlines()[-1])
    assert kind == "OutOfMemoryError", message
    assert message.startswith("model 'filled' version 1: onnxruntime could not allocate"), message
    assert "retry later" in message and "[inputs.n] max" in message, message
    assert after == [[5.0] * 4]
