"""Inputs of ONNX strings: every element is text, or the request is refused before it reaches the model.

onnxruntime turns any element it is given into its ``str()`` (``None`` into ``"None"``, a dict into its repr)
and fails to run on text that is not valid Unicode, which JSON can carry (``"\\ud800"``)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

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


def test_a_numpy_array_of_bytes_is_text_like_a_list_of_bytes(served: inprocserve.Server) -> None:
    # np.array([b"paris"]) is of dtype S5 (what h5py, np.loadtxt(dtype=bytes) and a pandas column of bytes give):
    # a list of the same bytes was decoded, the array refused with "expected strings (tensor(string)), got |S5".
    assert served.predict("text", {"text": np.array([b"h\xc3\xa9", b"paris"])})["echo"].tolist() == ["hé", "paris"]
    with pytest.raises(inprocserve.InvalidInputError, match=r"got an array of float64; send text: a list of str"):
        served.predict("text", {"text": np.array([1.5, 2.5])})


@pytest.mark.skipif(not hasattr(getattr(np, "dtypes", None), "StringDType"), reason="numpy 2's StringDType")
def test_a_numpy_2_string_array_is_text(served: inprocserve.Server) -> None:
    # numpy 2's variable-width text (np.dtypes.StringDType, dtype kind "T") was refused as not text: "expected
    # strings (tensor(string)), got an array of StringDType(); send text", for an array of nothing but text
    text = np.array(["hé", "paris"], dtype=np.dtypes.StringDType())
    assert served.predict("text", {"text": text})["echo"].tolist() == ["hé", "paris"]
    missing = np.array(["fine", None], dtype=np.dtypes.StringDType(na_object=None))
    with pytest.raises(inprocserve.InvalidInputError, match=r"element #1 is NoneType; send text"):
        served.predict("text", {"text": missing})


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
    # numpy's fixed-width bytes drop each element's trailing zero bytes: refused, saying what keeps them
    with pytest.raises(inprocserve.InvalidInputError, match=r"drops the trailing zero bytes.*dtype object"):
        signature.validate({"image": np.array([jpeg, b"GIF89a"])}, max_rows=8)


class _JsonOnlyServer(ThreadingHTTPServer):
    """An Open Inference Protocol server without the binary extension (as MLServer's REST): its model answers
    each ``BYTES`` element's length in bytes, as the JSON string it received encodes it."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _JsonOnlyHandler)
        self.posts = 0


class _JsonOnlyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _JsonOnlyServer
    metadata: ClassVar[dict[str, Any]] = {
        "name": "blob",
        "inputs": [{"name": "data", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "size", "datatype": "INT64", "shape": [-1]}],
    }

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, document: Any) -> None:
        body = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send({"name": "json-only", "extensions": []} if self.path == "/v2" else self.metadata)

    def do_POST(self) -> None:
        self.server.posts += 1
        data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["inputs"][0]["data"]
        sizes = [len(element.encode()) for element in data]
        self._send({"outputs": [{"name": "size", "datatype": "INT64", "shape": [len(sizes)], "data": sizes}]})


def test_bytes_that_json_cannot_carry_are_refused_before_they_reach_the_model_server(
    repository: Path, make_server: ServerFactory
) -> None:
    # Sent as JSON, each byte that is not UTF-8 became U+FFFD: a JPEG of 11 bytes reached the model as 19, and
    # any two such blobs of one length were one input to it.
    remote = _JsonOnlyServer()
    threading.Thread(target=remote.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        folder = repository / "blob" / "1"
        folder.mkdir(parents=True)
        (folder / "remote.toml").write_text(f'url = "http://127.0.0.1:{remote.server_port}"\nmodel = "blob"\n')
        server = make_server(repository)
        jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
        posts = remote.posts  # (the load's warm-up calls)
        with pytest.raises(inprocserve.InvalidInputError, match="element #1 is bytes that are not UTF-8 text"):
            server.predict("blob", {"data": np.array([b"text", jpeg], dtype=object)})
        assert remote.posts == posts
        answer = server.predict("blob", {"data": np.array([b"text", "t\u00e9xt"], dtype=object)})
        assert answer["size"].tolist() == [4, 5]  # UTF-8 text, as bytes or str, arrives as it is
    finally:
        remote.shutdown()
        remote.server_close()
