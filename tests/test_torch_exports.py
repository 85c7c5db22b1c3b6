"""Models exported from PyTorch for real, by both of ``torch.onnx.export``'s exporters (the default one since
torch 2.9, built on ``torch.export``, and the legacy TorchScript one), served as a team would serve them: answers
equal torch's, merged or alone; a model whose rows depend on each other is found at load and never merged; two
inputs whose batch axes the exporter names apart still share rows; and an export that runs only on the
sequence length it was traced with fails its load saying what was run and how to load it."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve

from .conftest import ServerFactory

torch = pytest.importorskip(
    "torch", reason="torch is a test dependency on Linux x86-64 with Python 3.11 (pip install -e '.[dev]')"
)
pytest.importorskip("onnxscript", reason="torch.onnx.export's default exporter needs onnxscript (the dev extra)")

EXPORTERS = ["dynamo", "legacy"]


class Classifier(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def forward(self, x: Any) -> Any:
        return torch.softmax(self.layers(x), dim=-1)


class Encoder(torch.nn.Module):  # type: ignore[misc]
    """A text encoder's shape: token ids and an attention mask of [batch, sequence], pooled to [batch, 2]."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(100, 8)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = (self.embedding(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)


class Centred(torch.nn.Module):  # type: ignore[misc]
    """Each row minus the mean of its batch: a row's answer depends on the other rows of its run."""

    def forward(self, x: Any) -> Any:
        return x - x.mean(dim=0, keepdim=True)


class Pair(torch.nn.Module):  # type: ignore[misc]
    def forward(self, a: Any, b: Any) -> tuple[Any, Any]:
        return a * 2, b + 1


class TimeMajor(torch.nn.Module):  # type: ignore[misc]
    """An LSTM as torch lays it out by default: [sequence, batch, features]."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 3)

    def forward(self, x: Any) -> Any:
        return self.lstm(x)[0]


def export(module: Any, args: tuple[Any, ...], path: Path, exporter: str, axes: dict[str, dict[int, str]]) -> None:
    """``axes``: input or output name -> {axis: dimension name}, as each exporter is told them."""
    path.parent.mkdir(parents=True)
    inputs = list(axes)[: len(args)]
    outputs = list(axes)[len(args) :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the legacy exporter's DeprecationWarning, the new one's notices)
        if exporter == "legacy":
            torch.onnx.export(
                module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes, dynamo=False
            )
        else:
            dims: dict[str, Any] = {}
            shapes = {
                name: {axis: dims.setdefault(dim, torch.export.Dim(dim)) for axis, dim in axes[name].items()}
                for name in inputs
            }
            torch.onnx.export(
                module, args, str(path), input_names=inputs, output_names=outputs, dynamic_shapes=shapes, dynamo=True
            )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The modules, each exported once per exporter into one repository (the exports take a few seconds)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("torch-exports")
    modules = {"classifier": Classifier().eval(), "encoder": Encoder().eval(), "centred": Centred().eval()}
    ids, mask = torch.randint(0, 100, (2, 5)), torch.ones(2, 5, dtype=torch.int64)
    for exporter in EXPORTERS:
        batch = {0: "batch"}
        export(modules["classifier"], (torch.randn(2, 4),), folder / f"classifier-{exporter}" / "1" / "model.onnx",
               exporter, {"x": batch, "probs": batch})  # fmt: skip
        text = {0: "batch", 1: "sequence"}
        export(modules["encoder"], (ids, mask), folder / f"encoder-{exporter}" / "1" / "model.onnx", exporter,
               {"input_ids": text, "attention_mask": text, "logits": batch})  # fmt: skip
        export(modules["centred"], (torch.randn(3, 4),), folder / f"centred-{exporter}" / "1" / "model.onnx",
               exporter, {"x": batch, "y": batch})  # fmt: skip
    return folder, modules


@pytest.fixture(scope="module")
def served(exported: tuple[Path, dict[str, Any]]) -> Any:
    with inprocserve.Server(exported[0]) as server:
        yield server, exported[1]


def version_status(server: inprocserve.Server, model: str) -> dict[str, Any]:
    status: dict[str, Any] = server.status()["models"][model]["versions"]["1"]
    return status


def torch_answer(module: Any, *arrays: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        answer: np.ndarray = module(*(torch.from_numpy(array) for array in arrays)).numpy()
    return answer


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_an_exported_classifier_answers_as_torch_does_with_its_requests_merged(served: Any, exporter: str) -> None:
    server, modules = served
    model = f"classifier-{exporter}"
    assert version_status(server, model)["batchable"] is True
    before = version_status(server, model)
    rows = np.random.default_rng(1).standard_normal((200, 1, 4)).astype(np.float32)
    futures = [server.submit(model, row) for row in rows]  # one-row requests, all at once
    for row, future in zip(rows, futures, strict=True):
        np.testing.assert_allclose(future.result(timeout=30)["probs"], torch_answer(modules["classifier"], row),
                                   atol=1e-6)  # fmt: skip
    after = version_status(server, model)
    assert after["rows_run"] - before["rows_run"] == 200
    assert after["batches_run"] - before["batches_run"] < 200  # merged into shared runs


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_an_exported_encoder_answers_each_sequence_length_as_torch_does(served: Any, exporter: str) -> None:
    server, modules = served
    model = f"encoder-{exporter}"
    assert version_status(server, model)["batchable"] is True
    rng = np.random.default_rng(2)
    requests = []
    for _ in range(60):
        length = int(rng.integers(1, 12))
        mask = np.ones((1, length), np.int64)
        mask[0, length // 2 + 1 :] = 0  # padding at the end, as a tokenizer pads
        requests.append((rng.integers(0, 100, (1, length)).astype(np.int64), mask))
    futures = [server.submit(model, {"input_ids": ids, "attention_mask": mask}) for ids, mask in requests]
    for (ids, mask), future in zip(requests, futures, strict=True):
        np.testing.assert_allclose(future.result(timeout=30)["logits"], torch_answer(modules["encoder"], ids, mask),
                                   atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_an_export_whose_rows_depend_on_each_other_is_found_at_load_and_never_merged(
    served: Any, exporter: str
) -> None:
    server, modules = served
    model = f"centred-{exporter}"
    status = version_status(server, model)
    assert status["batchable"] is False
    assert "depends on the other rows of its run" in status["unbatchable_reason"]
    requests = [np.random.default_rng(seed).standard_normal((3, 4)).astype(np.float32) for seed in range(40)]
    futures = [server.submit(model, x) for x in requests]
    for x, future in zip(requests, futures, strict=True):  # merged, each would be centred on the others' mean
        np.testing.assert_allclose(future.result(timeout=30)["y"], torch_answer(modules["centred"], x), atol=1e-6)


def test_inputs_whose_batch_axes_the_exporter_names_apart_still_share_their_rows(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    # torch.export names each input's batch axis by its own Dim (or s0, s1 for Dim.AUTO); the legacy exporter
    # given lists names them a_dynamic_axes_1, b_dynamic_axes_1
    export(Pair(), (torch.randn(2, 3), torch.randn(3, 5)), tmp_path / "apart" / "1" / "model.onnx", "dynamo",
           {"a": {0: "rows_a"}, "b": {0: "rows_b"}, "ya": {0: "rows_a"}, "yb": {0: "rows_b"}})  # fmt: skip
    server = make_server(tmp_path)
    assert version_status(server, "apart")["batchable"] is True
    futures = [
        server.submit("apart", {"a": np.full((1, 3), n, np.float32), "b": np.full((1, 5), n, np.float32)})
        for n in range(30)
    ]
    for n, future in enumerate(futures):
        answer = future.result(timeout=30)
        np.testing.assert_array_equal(answer["ya"], np.full((1, 3), 2.0 * n))
        np.testing.assert_array_equal(answer["yb"], np.full((1, 5), n + 1.0))
    with pytest.raises(inprocserve.InvalidInputError, match="'b': has 3 rows but the other inputs have 2"):
        server.predict("apart", {"a": np.ones((2, 3), np.float32), "b": np.ones((3, 5), np.float32)})


def test_a_time_major_lstm_is_served_unmerged_and_answers_as_torch_does(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    # torch's LSTM is [sequence, batch, features]: axis 0 is time, whose steps depend on each other
    module = TimeMajor().eval()
    export(module, (torch.randn(5, 2, 4),), tmp_path / "lstm" / "1" / "model.onnx", "legacy",
           {"x": {0: "sequence", 1: "batch"}, "out": {0: "sequence", 1: "batch"}})  # fmt: skip
    server = make_server(tmp_path)
    assert version_status(server, "lstm")["batchable"] is False
    rng = np.random.default_rng(3)
    requests = [rng.standard_normal((int(rng.integers(2, 7)), 2, 4)).astype(np.float32) for _ in range(20)]
    futures = [server.submit("lstm", x) for x in requests]
    for x, future in zip(requests, futures, strict=True):
        np.testing.assert_allclose(future.result(timeout=30)["out"], torch_answer(module, x), atol=1e-6)


def test_an_export_that_runs_only_at_its_traced_length_says_what_the_warm_up_ran_and_how_to_load_it(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    # torch.export fixed the LSTM's sequence length (5) inside the graph while declaring the axis dynamic: the
    # warm-up's made-up request (length 1) failed with onnxruntime's words alone ("cannot be reshaped")
    module = TimeMajor().eval()
    folder = tmp_path / "lstm" / "1"
    export(module, (torch.randn(5, 2, 4),), folder / "model.onnx", "dynamo",
           {"x": {0: "sequence", 1: "batch"}, "out": {0: "sequence", 1: "batch"}})  # fmt: skip
    server = make_server(tmp_path)
    error = server.status()["models"]["lstm"]["versions"]["1"]["error"]
    assert "failed its warm-up run" in error and "reshape" in error.lower()
    assert "made-up request of zeros, x [1, 1, 4]" in error
    assert "takes real inputs from warmup.inputs_file" in error
    # as told: real inputs of the length it runs on, and it loads and answers as torch does
    x = np.random.default_rng(4).standard_normal((5, 2, 4)).astype(np.float32)
    np.save(tmp_path / "lstm" / "warmup.npy", x)  # (in the model's folder, beside its versions)
    (tmp_path / "lstm" / "config.toml").write_text('[warmup]\ninputs_file = "warmup.npy"\n')
    server = make_server(tmp_path)
    np.testing.assert_allclose(server.predict("lstm", x)["out"], torch_answer(module, x), atol=1e-6)
