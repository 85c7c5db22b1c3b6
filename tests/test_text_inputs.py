"""Inputs of ONNX strings: every element is text, or the request is refused before it reaches the model.

onnxruntime turns any element it is given into its ``str()`` (``None`` into ``"None"``, a dict into its repr)
and fails to run on text that is not valid Unicode, which JSON can carry (``"\\ud800"``)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import v2

from .conftest import ServerFactory
from .test_v2_codec import build_text_model, call


@pytest.fixture
def served(repository: Path, make_server: ServerFactory) -> inprocserve.Server:
    from inprocserve.testing import save_model

    save_model(build_text_model(), repository, "text", 1)
    return make_server(repository)


@pytest.mark.parametrize(
    ("element", "named"),
    [(None, "NoneType"), (True, "bool"), (3, "int"), ({"k": 1}, "dict"), (["a"], "list"), (1.5, "float")],
)
def test_an_element_that_is_not_text_is_refused_and_named(served: inprocserve.Server, element: Any, named: str) -> None:
    with pytest.raises(inprocserve.InvalidInputError, match=rf"input 'text'.*element #1 is {named}; send text"):
        served.predict("text", {"text": np.array(["fine", element], dtype=object)})


def test_text_that_is_not_valid_unicode_is_refused_before_it_runs(served: inprocserve.Server) -> None:
    runs = served.status()["models"]["text"]["versions"]["1"]["batches_run"]
    with pytest.raises(inprocserve.InvalidInputError, match="element #0 is not valid Unicode text"):
        served.predict("text", {"text": ["\ud800", "a"]})
    assert served.status()["models"]["text"]["versions"]["1"]["batches_run"] == runs


def test_bytes_holding_utf8_text_are_decoded_and_the_caller_s_array_is_left_alone(served: inprocserve.Server) -> None:
    sent = np.array([b"h\xc3\xa9", "x"], dtype=object)
    assert served.predict("text", {"text": sent})["echo"].tolist() == ["hé", "x"]
    assert sent.tolist() == [b"h\xc3\xa9", "x"]
    with pytest.raises(inprocserve.InvalidInputError, match="element #0 is bytes that are not UTF-8 text"):
        served.predict("text", {"text": [b"\xff"]})


def test_numpy_text_and_its_elements_pass(served: inprocserve.Server) -> None:
    answer = served.predict("text", {"text": np.array(["a", "é"])})["echo"]
    assert answer.tolist() == ["a", "é"]


def test_a_json_lone_surrogate_is_a_400_and_the_requests_beside_it_are_answered(served: inprocserve.Server) -> None:
    endpoints = v2.Endpoints(lambda: served)

    def infer(data: list[str]) -> tuple[int, Any]:
        tensor = {"name": "text", "shape": [len(data)], "datatype": "BYTES", "data": data}
        status, document, _ = call(
            endpoints, "POST", "/v2/models/text/infer", json.dumps({"inputs": [tensor]}).encode()
        )
        return status, document

    status, document = infer(["ok", "\ud800"])
    assert status == 400 and "element #1 is not valid Unicode text" in document["error"]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(infer, [["\ud800"] if i % 3 == 0 else [f"row {i}"] for i in range(48)]))
    for i, (status, document) in enumerate(answers):
        if i % 3 == 0:
            assert status == 400
        else:
            assert status == 200 and document["outputs"][0]["data"] == [f"row {i}"]


def test_a_remote_bytes_input_takes_any_bytes_as_they_are() -> None:
    # A model server's BYTES tensor carries any bytes (an encoded image, say), unlike an ONNX string tensor.
    from inprocserve._remote import signature_from_metadata

    metadata = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "size", "datatype": "INT64", "shape": [-1]}],
    }
    signature = signature_from_metadata(metadata, where="a model server")
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"  # how every JPEG file starts: not UTF-8
    arrays, rows = signature.validate({"image": np.array([jpeg, "text"], dtype=object)}, max_rows=8)
    assert rows == 2 and arrays["image"].tolist() == [jpeg, "text"]
    body, _ = v2.encode_infer_request(arrays)
    assert jpeg in body  # sent in the binary extension, unchanged
    for bad, problem in ((None, "element #0 is NoneType"), ("\ud800", "element #0 is not valid Unicode text")):
        with pytest.raises(inprocserve.InvalidInputError, match=problem):
            signature.validate({"image": np.array([bad], dtype=object)}, max_rows=8)
