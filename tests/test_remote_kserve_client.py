"""The other way round: KServe's own Python client (``kserve.InferenceRESTClient`` with ``InferRequest``) calling
the Open Inference Protocol endpoints the Flask plug-in mounts, served by werkzeug on 127.0.0.1. KServe cannot
be installed in the main venv (see tests/test_remote_kserve.py), so the client runs once per module in a child
process of KServe's venv, which writes what it got to files this process compares with onnxruntime's answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
from flask import Flask
from inprocserve_flask import Inprocserve
from werkzeug.serving import make_server

from inprocserve.testing import build_gather_model, build_mlp_model, save_model

from .test_remote_kserve import PYTHON, build_logic_model, build_upper_model
from .test_remote_mlserver import build_sqrt_model

pytestmark = pytest.mark.skipif(
    not PYTHON.is_file(),
    reason=f"KServe's venv is missing ({PYTHON}); run `make kserve-venv` (make test does) to test KServe's client",
)

CLIENT = '''
"""KServe's InferenceRESTClient against an Open Inference Protocol server: argv[1] its URL, argv[2] a folder
with inputs.npz ("<case>/<input>") and cases.json; writes outputs.npz ("<case>/<output>") and results.json."""

import asyncio
import json
import sys
from pathlib import Path

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput
from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse, ServerMetadataResponse
from kserve.utils.numpy_codec import from_np_dtype


async def main(url, folder):
    inputs = np.load(folder / "inputs.npz", allow_pickle=True)
    cases = json.loads((folder / "cases.json").read_text())
    results, outputs = {}, {}
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    results["ready"] = [
        await client.is_server_live(url),
        await client.is_server_ready(url),
        await client.is_model_ready(url, "mlp"),
        await client.is_model_ready(url, "nosuch"),
    ]
    async with httpx.AsyncClient(timeout=30) as http:  # (the client has no metadata call: KServe's own schema)
        results["server"] = ServerMetadataResponse.model_validate((await http.get(f"{url}/v2")).json()).model_dump()
        for model in ("mlp", "logic", "upper"):
            document = (await http.get(f"{url}/v2/models/{model}")).json()
            results[f"metadata/{model}"] = ModelMetadataResponse.model_validate(document).model_dump()
    for case, (model, binary, binary_output) in cases.items():
        tensors = []
        for key in inputs.files:
            if key.startswith(case + "/"):
                array = inputs[key]
                tensor = InferInput(key.split("/", 1)[1], list(array.shape), from_np_dtype(array.dtype))
                tensor.set_data_from_numpy(array, binary_data=binary)
                tensors.append(tensor)
        request = InferRequest(model_name=model, infer_inputs=tensors, request_id=f"id-{case}")
        if binary_output is not None:
            asked = {"binary_data": binary_output}
            request.request_outputs = [RequestedOutput(name, asked) for name in binary_output_names(model)]
        try:
            response = await client.infer(url, request, model_name=model)
        except httpx.HTTPStatusError as exc:
            results[case] = {"status": exc.response.status_code, "message": str(exc)}
            continue
        except Exception as exc:
            results[case] = {"raised": type(exc).__name__, "message": str(exc)}
            continue
        results[case] = {"id": response.id, "parameters": response.parameters}
        for output in response.outputs:
            # BYTES as str or bytes arrays, not object ones: np.savez pickles an object array, and numpy 2's
            # pickle names numpy._core, which the numpy 1 of the tests' process (numpy 1.24, make oldest)
            # cannot import
            array = output.as_numpy()
            outputs[f"{case}/{output.name}"] = np.array(array.tolist()) if array.dtype == object else array
    await client.close()
    np.savez(folder / "outputs.npz", **outputs)
    (folder / "results.json").write_text(json.dumps(results))


def binary_output_names(model):
    return {"mlp": ["y"], "sqrt": ["y"]}[model]


asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
'''


FEEDS: dict[str, tuple[str, dict[str, np.ndarray]]] = {
    "mlp": ("mlp", {"x": np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)}),
    "gather": ("gather", {"index": np.array([0, 9, 4], np.int64)}),
    "logic": ("logic", {"x": np.array([[1, -1], [2, 3]], np.float32), "flag": np.array([[True, True], [False, True]])}),
    "upper": ("upper", {"text": np.array(["ab", "Cd é", ""], dtype=object)}),
}
ERRORS: dict[str, tuple[str, dict[str, np.ndarray]]] = {
    "refused": ("gather", {"index": np.array([1, 19], np.int64)}),
    "wrong-datatype": ("gather", {"index": np.array([1.5], np.float32)}),
    "unknown-model": ("nosuch", {"index": np.array([1], np.int64)}),
}
NAN = ("sqrt", {"x": np.array([[-1, 4]], np.float32)})


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    for name, model in (
        ("mlp", build_mlp_model((16, 32, 3), seed=7)),
        ("gather", build_gather_model(table_rows=10)),
        ("logic", build_logic_model()),
        ("upper", build_upper_model()),
        ("sqrt", build_sqrt_model()),
    ):
        save_model(model, folder, name, 1)
    return folder


@pytest.fixture(scope="module")
def kserve_client(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Any]]:
    """What KServe's client got from the Flask plug-in: (results.json, outputs.npz)."""
    app = Flask(__name__)
    app.config.update(INPROCSERVE_REPOSITORY=str(repository), INPROCSERVE_V2_PROTOCOL=True)
    Inprocserve(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="v2-http", daemon=True)
    thread.start()
    folder = tmp_path_factory.mktemp("kserve-client")
    cases: dict[str, tuple[str, bool, bool | None]] = {}
    arrays: dict[str, np.ndarray] = {}

    def add(case: str, model: str, feeds: dict[str, np.ndarray], binary: bool, binary_output: bool | None) -> None:
        cases[case] = (model, binary, binary_output)
        arrays.update({f"{case}/{name}": array for name, array in feeds.items()})

    for name, (model, feeds) in FEEDS.items():
        for binary in (False, True):
            add(f"{name}-{'binary' if binary else 'json'}", model, feeds, binary, None)
    add("mlp-json-in-binary-out", "mlp", FEEDS["mlp"][1], False, True)
    for name, (model, feeds) in ERRORS.items():
        add(name, model, feeds, False, None)
    add("nan-json", *NAN, False, None)
    add("nan-binary-out", *NAN, False, True)
    np.savez(folder / "inputs.npz", **arrays)  # type: ignore[arg-type]
    (folder / "cases.json").write_text(json.dumps(cases))
    (folder / "client.py").write_text(CLIENT)
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "OTEL_"))}
    try:
        run = subprocess.run(
            [str(PYTHON), str(folder / "client.py"), f"http://127.0.0.1:{server.server_port}", str(folder)],
            env=environment,
            capture_output=True,
            timeout=90,
        )
        assert run.returncode == 0, run.stderr.decode()[-3000:]
        with np.load(folder / "outputs.npz") as outputs:  # (no pickles: any numpy reads them)
            yield json.loads((folder / "results.json").read_text()), dict(outputs)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        Inprocserve.close(app)


def test_readiness_and_metadata_read_by_kserves_client_and_schema(
    kserve_client: tuple[dict[str, Any], Any],
) -> None:
    results, _ = kserve_client
    assert results["ready"] == [True, True, True, False]  # live, ready, mlp ready, an unknown model not
    assert results["server"]["name"] == "inprocserve"
    assert results["server"]["extensions"] == ["binary_tensor_data", "parameters"]
    assert results["metadata/mlp"] == {
        "name": "mlp",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    }
    logic = results["metadata/logic"]
    assert [(t["name"], t["datatype"]) for t in logic["inputs"] + logic["outputs"]] == [
        ("x", "FP32"),
        ("flag", "BOOL"),
        ("y", "BOOL"),
    ]
    assert results["metadata/upper"]["inputs"][0]["datatype"] == "BYTES"


def test_kserves_client_gets_onnxruntimes_answers_in_json_and_binary(
    kserve_client: tuple[dict[str, Any], Any], repository: Path
) -> None:
    results, outputs = kserve_client
    cases = [(f"{name}-{encoding}", name) for name in FEEDS for encoding in ("json", "binary")]
    cases.append(("mlp-json-in-binary-out", "mlp"))
    for case, name in cases:
        model, feeds = FEEDS[name]
        session = onnxruntime.InferenceSession(str(repository / model / "1" / "model.onnx"))
        expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
        assert results[case]["id"] == f"id-{case}", results[case]  # the request's id, echoed
        assert results[case]["parameters"]["inprocserve_variant"] == "default"
        for output, want in expected.items():
            got = outputs[f"{case}/{output}"]
            assert got.shape == want.shape, case
            if want.dtype.kind == "f":
                assert got.dtype == want.dtype, case
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
            else:
                # (KServe's client reads JSON BYTES back as str, binary ones as bytes)
                decoded = [v.decode() if isinstance(v, bytes) else v for v in got.ravel().tolist()]
                assert decoded == want.ravel().tolist(), case


def test_errors_reach_kserves_client_with_their_status_and_message(kserve_client: tuple[dict[str, Any], Any]) -> None:
    # KServe's client puts the protocol's {"error": ...} text in its HTTPStatusError when the answer's
    # Content-Type is exactly application/json, as the plug-in sends it.
    results, _ = kserve_client
    assert results["refused"]["status"] == 400
    assert "indices element out of data bounds" in results["refused"]["message"]
    assert results["wrong-datatype"]["status"] == 400
    assert "input 'index' was sent as FP32" in results["wrong-datatype"]["message"]
    assert results["unknown-model"]["status"] == 404
    assert "unknown model 'nosuch'" in results["unknown-model"]["message"]


def test_nan_reaches_kserves_client_in_binary_outputs_only(kserve_client: tuple[dict[str, Any], Any]) -> None:
    # A JSON answer writes NaN as the token NaN (as Triton does: docs/protocol.md); KServe's client parses
    # answers with orjson, which refuses it. Binary outputs carry it.
    results, outputs = kserve_client
    assert results["nan-json"]["raised"] == "InvalidInput" and "JSON" in results["nan-json"]["message"]
    answer = outputs["nan-binary-out/y"]
    assert np.isnan(answer[0, 0]) and answer[0, 1] == 2.0
