"""The remote backend against a real Open Inference Protocol server this project did not write: MLServer,
started on 127.0.0.1 with a small custom runtime that runs an ONNX model with onnxruntime.

MLServer pins protobuf and grpc versions the main venv cannot take, so it runs from its own venv, made by
``make mlserver-venv`` (``make test`` makes it and points INPROCSERVE_MLSERVER_PYTHON at it); without it
these tests skip and say so.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

import inprocserve
from inprocserve._remote import RemoteBackend
from inprocserve._remote_model import RemoteModel
from inprocserve.testing import build_gather_model, build_mlp_model

from .conftest import wait_until
from .ports import reserved_port

ROOT = Path(__file__).resolve().parent.parent
# absolute, not resolved: the venv's python is a link to the base interpreter, and MLServer runs in another cwd
PYTHON = Path(os.environ.get("INPROCSERVE_MLSERVER_PYTHON", ROOT / ".venv-mlserver" / "bin" / "python")).absolute()

pytestmark = pytest.mark.skipif(
    not PYTHON.is_file(),
    reason=f"MLServer's venv is missing ({PYTHON}); run `make mlserver-venv` (make test does) to test against MLServer",
)

RUNTIME = '''
"""An MLServer runtime that runs model.onnx with onnxruntime; onnxruntime's refusals become 400s."""

import asyncio
import os

import onnxruntime
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        self._session = onnxruntime.InferenceSession(self.settings.parameters.uri)
        self._outputs = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        try:
            arrays = self._session.run(None, feeds)
        except (onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument,
                onnxruntime.capi.onnxruntime_pybind11_state.Fail) as exc:
            raise MLServerError(f"the model refused the inputs: {exc}", status_code=400) from None
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name, array) for name, array in zip(self._outputs, arrays)],
        )


class HeldRuntime(OnnxRuntime):
    """Loads as OnnxRuntime does, once the file ``hold`` beside the model is gone (a load that takes a while)."""

    async def load(self) -> bool:
        hold = os.path.join(os.path.dirname(self.settings.parameters.uri), "hold")
        while os.path.exists(hold):
            await asyncio.sleep(0.02)
        return await super().load()
'''


def write_model(
    folder: Path,
    name: str,
    model: object,
    inputs: list[dict[str, object]],
    outputs: list[dict[str, object]],
    *,
    implementation: str = "onnx_runtime.OnnxRuntime",
) -> Path:
    from onnx import save

    target = folder / name
    target.mkdir(parents=True)
    save(model, str(target / "model.onnx"))
    settings = {
        "name": name,
        "implementation": implementation,
        "parameters": {"uri": str(target / "model.onnx"), "version": "1"},
        "inputs": inputs,
        "outputs": outputs,
    }
    (target / "model-settings.json").write_text(json.dumps(settings))
    return target / "model.onnx"


def build_sqrt_model() -> object:
    """y = sqrt(x): a negative input answers NaN."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sqrt", ["x"], ["y"])],
        "sqrt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("mlserver")
    (folder / "onnx_runtime.py").write_text(RUNTIME)
    write_model(
        folder,
        "mlp",
        build_mlp_model((16, 32, 3), seed=7),
        [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}],
        [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    )
    write_model(
        folder,
        "gather",
        build_gather_model(table_rows=10),
        [{"name": "index", "datatype": "INT64", "shape": [-1]}],
        [{"name": "rows", "datatype": "FP32", "shape": [-1, 4]}],
    )
    write_model(
        folder,
        "sqrt",
        build_sqrt_model(),
        [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    )
    write_model(
        folder,
        "held",
        build_sqrt_model(),
        [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
        implementation="onnx_runtime.HeldRuntime",
    )
    http_port = reserved_port()  # MLServer takes port numbers only
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": reserved_port(),
        "metrics_port": reserved_port(),
        "parallel_workers": 0,
        "load_models_at_startup": True,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "OTEL_"))}
    environment["PYTHONPATH"] = str(folder)
    log = (folder / "mlserver.log").open("wb")
    process = subprocess.Popen(
        [str(PYTHON), "-m", "mlserver.cli.main", "start", str(folder)],
        cwd=folder,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 90
        while True:  # bounded: 90 s, and stops as soon as MLServer exits
            try:
                with urllib.request.urlopen(f"{url}/v2/models/gather/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"MLServer did not become ready:\n{(folder / 'mlserver.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield url, folder
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
        log.close()


@pytest.fixture
def backends() -> Iterator[list[RemoteBackend]]:
    made: list[RemoteBackend] = []
    yield made
    for backend in made:
        backend.close()


def make(backends: list[RemoteBackend], url: str, model: str) -> RemoteBackend:
    backend = RemoteBackend(model, 1, RemoteModel(url=url, model=model, version="1"))
    backends.append(backend)
    return backend


def test_metadata_inference_and_json_tensors(mlserver: tuple[str, Path], backends: list[RemoteBackend]) -> None:
    url, folder = mlserver
    backend = make(backends, url, "mlp")
    signature = backend.prepare()
    assert [(s.name, s.dtype, s.shape) for s in signature.inputs] == [("x", np.dtype(np.float32), (None, 16))]
    assert signature.output_names == ("y",)
    assert backend.status()["binary_tensors"] is False  # MLServer does not list the binary extension
    feeds = {"x": np.random.default_rng(3).standard_normal((7, 16)).astype(np.float32)}
    (answer,) = backend.run(backend.runners()[0], feeds)
    (expected,) = onnxruntime.InferenceSession(str(folder / "mlp" / "model.onnx")).run(None, feeds)
    np.testing.assert_allclose(answer, expected, rtol=1e-6)
    assert answer.dtype == np.float32 and answer.shape == (7, 3)


def test_refused_inputs_and_unknown_models(mlserver: tuple[str, Path], backends: list[RemoteBackend]) -> None:
    url, _ = mlserver
    backend = make(backends, url, "gather")
    slot = backend.runners()[0]
    (rows,) = backend.run(slot, {"index": np.array([0, 9], np.int64)})
    np.testing.assert_array_equal(rows[1], np.arange(36, 40, dtype=np.float32))
    with pytest.raises(inprocserve.InvalidInputError, match="refused the inputs"):
        backend.run(slot, {"index": np.array([3, 10], np.int64)})
    with pytest.raises(inprocserve.ModelLoadError, match="answered 404"):
        make(backends, url, "nosuchmodel").prepare()


def test_a_repository_version_on_mlserver_answers_predict(mlserver: tuple[str, Path], tmp_path: Path) -> None:
    url, folder = mlserver
    repository = tmp_path / "models"
    (repository / "mlp" / "1").mkdir(parents=True)
    (repository / "mlp" / "1" / "remote.toml").write_text(f'url = "{url}"\nmodel = "mlp"\nversion = "1"\n')
    server = inprocserve.Server(repository)
    try:
        feeds = {"x": np.random.default_rng(4).standard_normal((3, 16)).astype(np.float32)}
        answer = server.predict("mlp", feeds)
        (expected,) = onnxruntime.InferenceSession(str(folder / "mlp" / "model.onnx")).run(None, feeds)
        np.testing.assert_allclose(answer["y"], expected, rtol=1e-6)
        assert answer.version == 1
        version = server.status()["models"]["mlp"]["versions"]["1"]
        assert version["backend"] == "remote" and version["health"] is None
        assert server.readiness().ready
    finally:
        server.close(timeout_s=10)


def test_a_nan_answered_by_mlserver_reaches_the_caller_as_nan(
    mlserver: tuple[str, Path], backends: list[RemoteBackend]
) -> None:
    # MLServer writes NaN as null in JSON tensors (it takes no binary ones).
    url, _ = mlserver
    backend = make(backends, url, "sqrt")
    backend.prepare()
    (answer,) = backend.run(backend.runners()[0], {"x": np.array([[-1.0, 4.0], [9.0, -4.0]], np.float32)})
    assert answer.dtype == np.float32 and answer.shape == (2, 2)
    assert np.isnan(answer[0, 0]) and np.isnan(answer[1, 1]) and answer[0, 1] == 2.0 and answer[1, 0] == 3.0


def http_status(url: str, *, method: str = "GET", timeout_s: float = 5.0) -> int:
    """The HTTP status ``url`` answers (an error status too), for a request with an empty body."""
    request = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_a_model_mlserver_is_still_loading_is_unavailable_not_the_callers_bad_input(
    mlserver: tuple[str, Path], backends: list[RemoteBackend]
) -> None:
    # MLServer serves HTTP before its models are loaded (a restarted server loads them as it starts, as it does
    # a model loaded through its repository API), and answers a model that is loading 400 "Model held with
    # version 1 is not ready yet.": that was an InvalidInputError, the batcher bisected each batch down to
    # single requests, every caller was told its inputs were bad (an HTTP 400), and the circuit took the
    # server for up. The model did not run: it is a RemoteUnavailableError (a 503), counted for the circuit.
    url, folder = mlserver
    backend = make(backends, url, "held")
    backend.prepare()
    feeds = {"x": np.array([[4.0, 9.0]], np.float32)}
    hold = folder / "held" / "hold"
    hold.touch()
    loading: threading.Thread | None = None
    try:
        assert http_status(f"{url}/v2/repository/models/held/unload", method="POST", timeout_s=30) == 200
        loading = threading.Thread(
            target=http_status,
            args=(f"{url}/v2/repository/models/held/load",),
            kwargs={"method": "POST", "timeout_s": 30},
            daemon=True,
        )
        loading.start()
        wait_until(lambda: http_status(f"{url}/v2/models/held/versions/1/ready") == 400)  # loading (404: unknown)
        with pytest.raises(inprocserve.RemoteUnavailableError, match="not ready") as caught:
            backend.run(backend.runners()[0], feeds, timeout_s=5)
        assert not isinstance(caught.value, inprocserve.InvalidInputError)
        assert backend.status()["consecutive_failures"] == 1
    finally:
        hold.unlink(missing_ok=True)
        if loading is not None:
            loading.join(timeout=30)
    (answer,) = backend.run(backend.runners()[0], feeds)  # loaded: answered again
    np.testing.assert_array_equal(answer, [[2.0, 3.0]])
