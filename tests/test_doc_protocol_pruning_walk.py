"""docs/protocol.md and docs/pruning.md walked as a platform engineer who already runs Triton and KServe clients:
``tritonclient`` and KServe's client against the Flask plug-in over loopback HTTP, and pruning.md's shipping
commands run as written. Each test holds the code to a sentence a walk of the pages found wrong or missing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from inprocserve_flask import Inprocserve
from werkzeug.serving import make_server

import inprocserve
from inprocserve.testing import build_mlp_model, build_scale_model, save_model

from .test_remote_kserve import PYTHON as KSERVE_PYTHON

ROOT = Path(__file__).resolve().parent.parent


def page(name: str) -> str:
    return " ".join((ROOT / "docs" / name).read_text().split())  # sentences wrap: compare with single spaces


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Flask plug-in's protocol endpoints serving ``scale`` (y = 2x on x[batch, 4]) on 127.0.0.1."""
    repository = tmp_path_factory.mktemp("models")
    save_model(build_scale_model(2.0), repository, "scale")
    app = Flask(__name__)
    app.config.update(INPROCSERVE_REPOSITORY=str(repository), INPROCSERVE_V2_PROTOCOL=True)
    Inprocserve(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="v2-http", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        Inprocserve.close(app)


def test_unsupported_extensions_answer_tritonclient_as_the_page_says(url: str) -> None:
    """protocol.md said every unsupported extension was "a 400 [that] says so where a request asks for them": the
    repository, statistics, trace and logging extensions' own endpoints answer 404, as any unknown path does."""
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    text = page("protocol.md")
    client = httpclient.InferenceServerClient(url=url)
    x = httpclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    shared = httpclient.InferInput("x", [1, 4], "FP32")
    shared.set_shared_memory("region", 16)

    def status_of(call: object) -> tuple[int, str]:
        with pytest.raises(InferenceServerException) as raised:
            call()  # type: ignore[operator]
        return int(raised.value.status()), raised.value.message()

    for call, says in (
        (lambda: client.infer("scale", [shared]), "shared memory extension is not supported"),
        (lambda: client.infer("scale", [x], outputs=[httpclient.InferRequestedOutput("y", class_count=2)]),
         "classification extension is not supported"),
        (lambda: client.infer("scale", [x], sequence_id=3), "sequence extension is not supported"),
    ):  # fmt: skip
        status, message = status_of(call)
        assert status == 400 and says in message, message
    assert "are a 400 that says so" in text
    for call, path in (
        (client.get_model_repository_index, "/v2/repository/index"),
        (lambda: client.load_model("scale"), "/v2/repository/models/scale/load"),
        (lambda: client.get_inference_statistics("scale"), "/v2/models/scale/stats"),
        (client.get_trace_settings, "/v2/trace/setting"),
        (client.get_log_settings, "/v2/logging"),
        (client.get_system_shared_memory_status, "/v2/systemsharedmemory/status"),
    ):
        status, message = status_of(call)
        assert (status, message) == (404, f"no Open Inference Protocol endpoint at '{path}'")
    shown = re.search(r"are a 404 like any other path, `(\{.*?\})`", text)
    assert shown is not None, "protocol.md no longer shows the 404 for an extension's endpoint"
    answer = json.loads(shown.group(1))
    assert answer == {"error": "no Open Inference Protocol endpoint at '/v2/repository/index'"}


@pytest.mark.skipif(not KSERVE_PYTHON.is_file(), reason=f"KServe's venv is missing ({KSERVE_PYTHON})")
def test_kserves_client_sends_a_json_nan_as_null_which_is_the_400_the_page_quotes(url: str) -> None:
    """protocol.md told KServe users to ask for binary outputs where NaN can appear, and said nothing of inputs:
    KServe's client (orjson) writes a NaN or infinity of a JSON input as ``null``, refused as "mixed or unsupported
    types" with no word of NaN then. The page now says so, and which 400 it is."""
    client = """
import asyncio, sys
import httpx, numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

async def main(url):
    client = InferenceRESTClient(RESTConfig(protocol="v2"))
    answers = []
    for binary in (False, True):
        x = InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.array([[np.nan, np.inf, 1, 2]], np.float32), binary_data=binary)
        request = InferRequest(model_name="scale", infer_inputs=[x], parameters={"binary_data_output": True})
        try:
            response = await client.infer(url, request, model_name="scale")
            answers.append(repr(response.outputs[0].as_numpy().tolist()))
        except httpx.HTTPStatusError as error:
            answers.append(f"{error.response.status_code} {error.response.text}")
    await client.close()
    print("\\n".join(answers))

asyncio.run(main(sys.argv[1]))
"""
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "OTEL_"))}
    run = subprocess.run(
        [str(KSERVE_PYTHON), "-c", client, f"http://{url}"], env=environment, capture_output=True, timeout=90
    )
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    as_json, as_binary = run.stdout.decode().splitlines()
    assert as_binary == "[[nan, inf, 2.0, 4.0]]"
    status, body = as_json.split(" ", 1)
    text = page("protocol.md")
    quoted = re.search(r"`null` a NaN in a request .*?: it is a 400\s+\(`(.*?)`\)", text)
    assert quoted is not None, "protocol.md no longer says what a null in request data gets"
    assert status == "400" and quoted.group(1) in json.loads(body)["error"], body
    assert "orjson writes NaN and infinity in a JSON request as `null`" in text


def test_pruning_mds_shipping_commands_keep_the_stable_version_answering(tmp_path: Path) -> None:
    """pruning.md's "How to ship one" moved the pruned version 4 into the repository and then said "let it prove
    itself on live traffic before it answers anyone": under the default version policy ("latest") version 4
    answered every request from the next refresh, and the shadow of version 4 it described never ran."""
    for version in (1, 2, 3):
        save_model(build_mlp_model(seed=version), tmp_path / "models", "fraud", version)
    import onnx

    onnx.save(build_mlp_model(seed=4), tmp_path / "pruned.onnx")
    section = (ROOT / "docs" / "pruning.md").read_text().split("## How to ship one\n", 1)[1]
    (commands,) = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
    x = {"x": np.ones((1, 16), np.float32)}
    with inprocserve.Server(tmp_path / "models", poll_interval_s=None) as server:
        assert server.predict("fraud", x).version == 3  # what serves before the pruned version arrives
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", f'python() {{ "{sys.executable}" "$@"; }}\n{commands}'],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        assert (tmp_path / "models" / "fraud" / "4" / "model.onnx").is_file()
        server.refresh()
        answer = server.predict("fraud", x, context={"user_id": "u-1"})
        assert (answer.version, answer.variant) == (3, "stable"), "the pruned version answered before its shadow run"
        assert 4 in server.models["fraud"]  # loaded, to be shadowed and then canaried


def test_other_parameters_take_what_the_table_says(url: str) -> None:
    """protocol.md's table said other parameters take "string, number or boolean values": a ``null`` is taken too
    (a client that writes an unset option so is served), and a list or an object is a 400."""
    import urllib.error
    import urllib.request

    row = [line for line in (ROOT / "docs" / "protocol.md").read_text().splitlines() if line.startswith("| other `")]
    assert row == ["| other `parameters` | accepted (string, number or boolean values, or `null`) and ignored; a list "
                   "or object value is a 400 |"]  # fmt: skip
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}

    def status(parameters: dict[str, object]) -> int:
        body = json.dumps({"inputs": [tensor], "parameters": parameters}).encode()
        request = urllib.request.Request(f"http://{url}/v2/models/scale/infer", data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            error.close()
            return error.code

    assert [status({"option": value}) for value in ("a", 1, 1.5, True, None)] == [200] * 5
    assert [status({"option": value}) for value in ([1], {"a": 1})] == [400, 400]
