"""PyTorch tensors as inputs, as a team with torch preprocessing sends them: ``predict`` and ``predict_many`` read a
CPU tensor as an array, and a tensor numpy cannot read (one that requires grad, a bfloat16 one, a sparse one,
one on another device) is the caller's ``InvalidInputError`` with torch's own advice, never an untyped
``RuntimeError`` or ``TypeError`` (a web view's 500) from inside the library."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory

torch = pytest.importorskip(
    "torch", reason="torch is a test dependency on Linux x86-64 with Python 3.11 (pip install -e '.[dev]')"
)


@pytest.fixture
def server(repository: Path, make_server: ServerFactory) -> inprocserve.Server:
    save_model(build_scale_model(2.0), repository, "scale", 1)  # x: float32 [batch, 4] -> y = 2x
    return make_server(repository)


def test_a_cpu_tensor_is_read_as_an_array_by_every_way_in(server: inprocserve.Server) -> None:
    features = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    expected = 2 * features.numpy()
    np.testing.assert_array_equal(server.predict("scale", features)["y"], expected)
    np.testing.assert_array_equal(server.predict("scale", {"x": features.T.contiguous().T})["y"], expected)
    np.testing.assert_array_equal(server.submit("scale", features).result(timeout=30)["y"], expected)
    np.testing.assert_array_equal(asyncio.run(server.apredict("scale", features))["y"], expected)
    (whole,) = server.predict_many("scale", features)
    np.testing.assert_array_equal(whole["y"], expected)
    batches = [answer["y"] for answer in server.predict_many("scale", iter([features[:2], features[2:]]))]
    np.testing.assert_array_equal(np.concatenate(batches), expected)
    with torch.inference_mode():  # (an inference tensor has no grad to refuse)
        np.testing.assert_array_equal(server.predict("scale", features * 1)["y"], expected)


def requires_grad() -> Any:
    return torch.ones(3, 4, requires_grad=True)  # e.g. straight out of an nn.Module's preprocessing


REFUSED: dict[str, tuple[Callable[[], Any], str]] = {
    "requires grad": (requires_grad, "detach()"),
    "bfloat16": (lambda: torch.ones(3, 4, dtype=torch.bfloat16), "BFloat16"),
    "sparse": (lambda: torch.ones(3, 4).to_sparse(), "to_dense()"),
    "meta device": (lambda: torch.ones(3, 4, device="meta"), "cpu()"),
    "conjugate bit": (lambda: torch.ones(3, 4, dtype=torch.complex64).conj(), "resolve_conj()"),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_a_tensor_numpy_cannot_read_is_an_input_error_that_says_what_to_do(
    server: inprocserve.Server, kind: str
) -> None:
    # each of these raised torch's untyped RuntimeError or TypeError from predict or predict_many
    make, advice = REFUSED[kind]
    calls: dict[str, Callable[[Any], Any]] = {
        "predict": lambda tensor: server.predict("scale", tensor),
        "predict a mapping": lambda tensor: server.predict("scale", {"x": tensor}),
        "apredict": lambda tensor: asyncio.run(server.apredict("scale", tensor)),
        "predict_many": lambda tensor: list(server.predict_many("scale", tensor)),
        "predict_many a mapping": lambda tensor: list(server.predict_many("scale", {"x": tensor})),
        "predict_many an iterable": lambda tensor: list(server.predict_many("scale", iter([tensor]))),
    }
    for way, call in calls.items():
        with pytest.raises(inprocserve.InvalidInputError) as refused:
            call(make())
        assert advice in str(refused.value), (way, str(refused.value))
    # and nothing else broke: the next request is answered
    np.testing.assert_array_equal(server.predict("scale", torch.ones(1, 4))["y"], [[2.0] * 4])


def test_a_batch_of_good_tensors_is_answered_beside_a_refused_one(server: inprocserve.Server) -> None:
    # one caller's tensor that requires grad fails that caller only, not the others merged into its run
    good = [server.submit("scale", torch.full((1, 4), float(index))) for index in range(8)]
    with pytest.raises(inprocserve.InvalidInputError, match=r"detach\(\)"):
        server.submit("scale", requires_grad()).result(timeout=30)
    for index, future in enumerate(good):
        np.testing.assert_array_equal(future.result(timeout=30)["y"], [[2.0 * index] * 4])


class Numbered(torch.utils.data.Dataset):
    """Row ``i`` is four times ``i``: an offline job's data set, read by a DataLoader."""

    def __len__(self) -> int:
        return 103

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"x": torch.full((4,), float(index)), "row_id": index}


# 2: the loader forks its workers while the server's threads run. Two workers whatever this host has: on a host
# of one CPU (a CI runner pinned or quota'd to one) torch warns that they are more than its cores, advice about
# the host that pytest's warnings-as-errors made a failure of the test.
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.filterwarnings("ignore:This DataLoader will create 2 worker processes in total:UserWarning")
def test_predict_many_scores_a_data_loaders_batches_in_order(server: inprocserve.Server, workers: int) -> None:
    loader = torch.utils.data.DataLoader(Numbered(), batch_size=10, num_workers=workers)
    answers = list(server.predict_many("scale", ({"x": batch["x"]} for batch in loader)))
    assert [len(answer["y"]) for answer in answers] == [10] * 10 + [3]
    np.testing.assert_array_equal(np.concatenate([answer["y"][:, 0] for answer in answers]), 2.0 * np.arange(103))
    # the loader's own dicts carry the row ids too: refused by name, not scored on the wrong columns
    with pytest.raises(inprocserve.InvalidInputError, match=r"unknown input\(s\) 'row_id'"):
        list(server.predict_many("scale", loader))
