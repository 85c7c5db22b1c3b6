"""Models exported from PyTorch for real, by both of ``torch.onnx.export``'s exporters (the default one since
torch 2.9, built on ``torch.export``, and the legacy TorchScript one), served as a team would serve them: answers
equal torch's, merged or alone; an encoder's and a tagger's requests of different lengths merged by length, or
padded; a convolution over time that needs more steps than the warm-up's made-up one; models whose rows depend
on each other found at load and never merged; the axis names each exporter writes, or makes up, read as one
batch axis; the default exporter's weights file; and an export that runs only on the sequence length it was
traced with fails its load saying what was run and how to load it."""

from __future__ import annotations

import re
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
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


class Tagger(torch.nn.Module):  # type: ignore[misc]
    """A token classifier's shape (named entities): a score per token, [batch, sequence, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(100, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        return self.head(self.embedding(input_ids)) * attention_mask.unsqueeze(-1).to(torch.float32)


class Centred(torch.nn.Module):  # type: ignore[misc]
    """Each row minus the mean of its batch: a row's answer depends on the other rows of its run."""

    def forward(self, x: Any) -> Any:
        return x - x.mean(dim=0, keepdim=True)


class Detector(torch.nn.Module):  # type: ignore[misc]
    """A convolution over time, as in audio or sensor models: [batch, channels, time], max-pooled over time."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 8, kernel_size=5)

    def forward(self, x: Any) -> Any:
        return self.conv(x).amax(dim=-1)


class Normalized(torch.nn.Module):  # type: ignore[misc]
    """Batch normalization, exported in training mode: each row scaled by its batch's mean and variance."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(4)

    def forward(self, x: Any) -> Any:
        return self.norm(x)


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


def export(
    module: Any,
    args: tuple[Any, ...],
    path: Path,
    exporter: str,
    axes: dict[str, dict[int, str] | list[int]],
    **options: Any,
) -> None:
    """``axes``: input or output name -> {axis: dimension name}, as each exporter is told them; or a list of
    axes, left for the exporter to name (the legacy one takes the list, the default one ``Dim.AUTO``).
    ``options``: more of ``torch.onnx.export``'s arguments."""
    path.parent.mkdir(parents=True)
    inputs = list(axes)[: len(args)]
    outputs = list(axes)[len(args) :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the legacy exporter's DeprecationWarning, the new one's notices)
        if exporter == "legacy":
            torch.onnx.export(
                module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes, dynamo=False,
                **options,
            )  # fmt: skip
        else:
            dims: dict[str, Any] = {}
            shapes = {
                name: (
                    dict.fromkeys(given, torch.export.Dim.AUTO)
                    if isinstance(given, list)
                    else {axis: dims.setdefault(dim, torch.export.Dim(dim)) for axis, dim in given.items()}
                )
                for name, given in ((name, axes[name]) for name in inputs)
            }
            torch.onnx.export(
                module, args, str(path), input_names=inputs, output_names=outputs, dynamic_shapes=shapes, dynamo=True,
                **options,
            )  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The modules, each exported once per exporter into one repository (the exports take a few seconds)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("torch-exports")
    modules = {
        "classifier": Classifier().eval(),
        "encoder": Encoder().eval(),
        "tagger": Tagger().eval(),
        "detector": Detector().eval(),
        "centred": Centred().eval(),
        "normalized": Normalized().train(),
    }
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
        export(modules["detector"], (torch.randn(2, 4, 10),), folder / f"detector-{exporter}" / "1" / "model.onnx",
               exporter, {"x": {0: "batch", 2: "time"}, "scores": batch})  # fmt: skip
        # the axes left for the exporter to name: Dim.AUTO's s0, s1 / the legacy one's input_ids_dynamic_axes_1
        export(modules["encoder"], (ids, mask), folder / f"encoder-unnamed-{exporter}" / "1" / "model.onnx",
               exporter, {"input_ids": [0, 1], "attention_mask": [0, 1], "logits": [0]})  # fmt: skip
    # (both exporters export eval mode unless told; only the legacy one exports training mode's batch statistics)
    export(modules["normalized"], (torch.randn(3, 4),), folder / "normalized-legacy" / "1" / "model.onnx", "legacy",
           {"x": batch, "y": batch}, training=torch.onnx.TrainingMode.TRAINING)  # fmt: skip
    # the same export, its requests of lengths within a power of two padded to share runs (a tokenizer's pad id 0)
    shutil.copytree(folder / "encoder-dynamo", folder / "encoder-padded")  # (model.onnx and its model.onnx.data)
    padding = "[batching]\nmax_delay_s = 0.05\n[batching.padding]\ninputs = { input_ids = 1, attention_mask = 1 }\n"
    (folder / "encoder-padded" / "config.toml").write_text(padding)
    # and a score per token, cropped back to each request's length
    text = {0: "batch", 1: "sequence"}
    export(modules["tagger"], (ids, mask), folder / "tagger-padded" / "1" / "model.onnx", "legacy",
           {"input_ids": text, "attention_mask": text, "tags": text})  # fmt: skip
    (folder / "tagger-padded" / "config.toml").write_text(padding + "outputs = { tags = 1 }\n")
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
    assert version_status(server, model)["signature"]["batchable"] is True
    before = version_status(server, model)
    rows = np.random.default_rng(1).standard_normal((8, 25, 1, 4)).astype(np.float32)

    def client(requests: np.ndarray) -> list[np.ndarray]:  # one-row requests, 25 at once from each of 8 threads
        futures = [server.submit(model, row) for row in requests]
        return [future.result(timeout=30)["probs"] for future in futures]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(client, rows))
    for requests, probs in zip(rows, answers, strict=True):
        for row, answer in zip(requests, probs, strict=True):
            np.testing.assert_allclose(answer, torch_answer(modules["classifier"], row), atol=1e-6)
    after = version_status(server, model)
    assert after["rows_run"] - before["rows_run"] == 200
    assert after["batches_run"] - before["batches_run"] < 200  # merged into shared runs


def encoder_requests(seed: int, count: int, lengths: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """One-row requests of token ids and a mask, of lengths from ``lengths[0]`` to ``lengths[1]``, each with
    padding at its end, as a tokenizer pads."""
    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(count):
        length = int(rng.integers(lengths[0], lengths[1] + 1))
        mask = np.ones((1, length), np.int64)
        mask[0, length // 2 + 1 :] = 0
        requests.append((rng.integers(0, 100, (1, length)).astype(np.int64), mask))
    return requests


def assert_encoder_answers(
    server: inprocserve.Server, model: str, encoder: Any, requests: list[Any], output: str = "logits"
) -> None:
    futures = [server.submit(model, {"input_ids": ids, "attention_mask": mask}) for ids, mask in requests]
    for (ids, mask), future in zip(requests, futures, strict=True):
        np.testing.assert_allclose(future.result(timeout=30)[output], torch_answer(encoder, ids, mask), atol=1e-5)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_an_exported_encoder_answers_each_sequence_length_as_torch_does(served: Any, exporter: str) -> None:
    server, modules = served
    model = f"encoder-{exporter}"
    assert version_status(server, model)["batchable"] is True
    before = version_status(server, model)
    assert_encoder_answers(server, model, modules["encoder"], encoder_requests(2, 60, (1, 11)))
    after = version_status(server, model)
    assert after["rows_run"] - before["rows_run"] == 60
    assert after["batches_run"] - before["batches_run"] < 60  # those of one length share runs
    # the sequence axis both inputs are named after is one length: inputs that disagree are refused by name
    with pytest.raises(inprocserve.InvalidInputError, match="dimension 'sequence' must be the same in every input"):
        server.predict(model, {"input_ids": np.zeros((1, 5), np.int64), "attention_mask": np.ones((1, 4), np.int64)})


@pytest.mark.parametrize(("model", "output"), [("encoder", "logits"), ("tagger", "tags")])
def test_an_exported_encoders_requests_of_different_lengths_share_runs_when_padded(
    served: Any, model: str, output: str
) -> None:
    # padded with 0, which the attention mask leaves out of the pooling, and the tagger's scores per token
    # cropped back to each request's length (a longer answer fails the comparison): the answers are torch's
    # Runs are merged by chance of timing (a submitting thread descheduled under load lets each request run
    # alone): up to 5 rounds, one of which must take fewer runs than its 4 lengths. Unpadded, none ever can.
    server, modules = served
    runs_per_round = []
    for seed in range(5, 10):
        before = version_status(server, f"{model}-padded")
        assert_encoder_answers(server, f"{model}-padded", modules[model], encoder_requests(seed, 40, (4, 7)), output)
        after = version_status(server, f"{model}-padded")
        assert after["rows_run"] - before["rows_run"] == 40
        runs_per_round.append(after["batches_run"] - before["batches_run"])
        if runs_per_round[-1] < 4:
            break
    assert min(runs_per_round) < 4, f"runs per round of 40 requests of 4 lengths: {runs_per_round}"


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_the_axis_names_an_exporter_makes_up_are_read_as_one_batch_axis(served: Any, exporter: str) -> None:
    server, modules = served
    model = f"encoder-unnamed-{exporter}"
    status = version_status(server, model)
    shapes = {spec["name"]: spec["shape"] for spec in status["signature"]["inputs"] + status["signature"]["outputs"]}
    if exporter == "dynamo":  # torch.export's symbols, one per dimension, shared by the inputs and the output
        rows, sequence = shapes["input_ids"]
        assert re.fullmatch(r"s\d+", rows) and re.fullmatch(r"s\d+", sequence) and rows != sequence
        assert shapes == {"input_ids": [rows, sequence], "attention_mask": [rows, sequence], "logits": [rows, 2]}
    else:  # one name per axis of each tensor: named apart, left to the load's run of the model
        assert shapes == {
            "input_ids": ["input_ids_dynamic_axes_1", "input_ids_dynamic_axes_2"],
            "attention_mask": ["attention_mask_dynamic_axes_1", "attention_mask_dynamic_axes_2"],
            "logits": ["logits_dynamic_axes_1", 2],
        }
    assert status["batchable"] is True, status["unbatchable_reason"]
    before = version_status(server, model)
    assert_encoder_answers(server, model, modules["encoder"], encoder_requests(6, 30, (6, 6)))
    assert version_status(server, model)["batches_run"] - before["batches_run"] < 30
    mismatched = {"input_ids": np.zeros((1, 5), np.int64), "attention_mask": np.ones((1, 4), np.int64)}
    if exporter == "dynamo":
        with pytest.raises(inprocserve.InvalidInputError, match=f"dimension '{sequence}' must be the same"):
            server.predict(model, mismatched)
    else:  # nothing names the two lengths alike: the load's runs found the model needs them alike (it failed
        # inside onnxruntime before, "Attempting to broadcast an axis", an InferenceError: a web view's 500)
        with pytest.raises(inprocserve.InvalidInputError, match="must be of one length"):
            server.predict(model, mismatched)
        ids, mask = encoder_requests(7, 1, (3, 3))[0]
        answer = server.predict(model, {"input_ids": ids, "attention_mask": mask})["logits"]
        np.testing.assert_allclose(answer, torch_answer(modules["encoder"], ids, mask), atol=1e-5)


@pytest.mark.parametrize("model", ["centred-dynamo", "centred-legacy", "normalized-legacy"])
def test_an_export_whose_rows_depend_on_each_other_is_found_at_load_and_never_merged(served: Any, model: str) -> None:
    server, modules = served
    status = version_status(server, model)
    assert status["batchable"] is False
    assert "depends on the other rows of its run" in status["unbatchable_reason"]
    requests = [np.random.default_rng(seed).standard_normal((3, 4)).astype(np.float32) for seed in range(40)]
    futures = [server.submit(model, x) for x in requests]
    module = modules[model.split("-")[0]]
    for x, future in zip(requests, futures, strict=True):  # merged, each would be scaled by the others' rows too
        np.testing.assert_allclose(future.result(timeout=30)["y"], torch_answer(module, x), atol=1e-4)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_an_exported_convolution_over_time_loads_and_answers_each_length_as_torch_does(
    served: Any, exporter: str
) -> None:
    # its kernel of 5 needs 5 steps or more: the load's made-up request of 1 step failed its warm-up, and this
    # model, served as exported, never loaded ("Invalid input shape: {1}")
    server, modules = served
    model = f"detector-{exporter}"
    status = version_status(server, model)
    assert status["error"] is None
    assert status["batchable"] is True
    assert status["run_cost_ms"] is not None  # measured on the warm-up's length that runs
    rng = np.random.default_rng(8)
    requests = [rng.standard_normal((1, 4, int(rng.integers(5, 9)))).astype(np.float32) for _ in range(40)]
    futures = [server.submit(model, x) for x in requests]
    for x, future in zip(requests, futures, strict=True):
        np.testing.assert_allclose(future.result(timeout=30)["scores"], torch_answer(modules["detector"], x), atol=1e-5)
    with pytest.raises(inprocserve.InvalidInputError, match="Invalid input shape"):  # shorter than the kernel
        server.predict(model, np.zeros((1, 4, 3), np.float32))


def test_the_default_exporters_weights_file_beside_the_model_is_needed_and_named_when_left_behind(
    exported: tuple[Path, dict[str, Any]], tmp_path: Path, make_server: ServerFactory
) -> None:
    # torch.onnx.export(dynamo=True) writes model.onnx.data beside model.onnx (the embedding's weights here)
    source = exported[0] / "encoder-dynamo" / "1"
    assert (source / "model.onnx.data").stat().st_size > 0
    (tmp_path / "encoder" / "1").mkdir(parents=True)
    shutil.copy(source / "model.onnx", tmp_path / "encoder" / "1")  # the model file alone, as one might copy it
    error = make_server(tmp_path).status()["models"]["encoder"]["versions"]["1"]["error"]
    assert "keeps its data outside the model at 'model.onnx.data', which is not a file in the version folder" in error
    shutil.copy(source / "model.onnx.data", tmp_path / "encoder" / "1")
    ids, mask = encoder_requests(9, 1, (5, 5))[0]
    answer = make_server(tmp_path).predict("encoder", {"input_ids": ids, "attention_mask": mask})["logits"]
    np.testing.assert_allclose(answer, torch_answer(exported[1]["encoder"], ids, mask), atol=1e-5)


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
    assert "made-up request of zeros, x [1, 1, 4], and again with its dynamic inner axes 2, 16, 64 long" in error
    assert "takes real inputs from warmup.inputs_file" in error
    # as told: real inputs of the length it runs on, and it loads and answers as torch does
    x = np.random.default_rng(4).standard_normal((5, 2, 4)).astype(np.float32)
    np.save(tmp_path / "lstm" / "warmup.npy", x)  # (in the model's folder, beside its versions)
    (tmp_path / "lstm" / "config.toml").write_text('[warmup]\ninputs_file = "warmup.npy"\n')
    server = make_server(tmp_path)
    np.testing.assert_allclose(server.predict("lstm", x)["out"], torch_answer(module, x), atol=1e-6)
