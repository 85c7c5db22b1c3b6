"""Property-based fuzzing of what clients send over HTTP, through real Flask and Django request cycles.

A view written as docs/flask.md and docs/django.md write theirs hands any JSON body to the plug-ins' ``predict``
with the request's headers (user, deadline); the Open Inference Protocol endpoints (``/v2``) and the admin
endpoints take hostile bodies, headers and paths. Every answer must be a 2xx whose outputs are what a raw
onnxruntime session answers for the values accepted, or a 4xx (a 504 where the request set a deadline) whose JSON
body names the problem: never a 500, an exception out of a view, or a hang (each request runs on a worker thread,
waited on for at most :data:`HANG_S`). After each property a plain request still answers correctly, and no thread
was left behind.

The example counts keep the file to about half a minute on two cores (derandomized, with no example database,
as every property test of this folder); ``HYPOTHESIS_PROFILE=soak`` runs ten times as many, drawn at random.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import gzip
import io
import json
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import flask
import numpy as np
import onnxruntime as ort
import pytest
from django.http import HttpRequest, JsonResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from flask import Flask
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from inprocserve_django import apredict as django_apredict
from inprocserve_django import predict as django_predict
from inprocserve_django import reset_server
from inprocserve_flask import Inprocserve
from inprocserve_flask import predict as flask_predict

import inprocserve
from inprocserve import v2
from inprocserve.testing import build_add_model, build_scale_model, save_model

SOAK = os.environ.get("HYPOTHESIS_PROFILE") == "soak"
EXAMPLES = 1_000 if SOAK else 100
"""Examples per property (``make test``: the file in about half a minute)."""
HANG_S = 30.0
"""How long one request may take before it counts as a hang."""
TOKEN = "fuzz-admin-token"
FUZZ = settings(
    max_examples=EXAMPLES, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


# scale: y = 2x (version 1) or 3x (version 2) on x[batch, 4] float32; add: total = a + b, count = 2n
def build_text_model() -> Any:
    """``t = s`` on text ``s[batch, 1]`` (ONNX strings: the protocol's BYTES)."""
    from onnx import TensorProto, helper

    s, t = (helper.make_tensor_value_info(name, TensorProto.STRING, ["batch", 1]) for name in ("s", "t"))
    graph = helper.make_graph([helper.make_node("Identity", ["s"], ["t"])], "text", [s], [t])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


VERSIONS = {
    ("scale", 1): build_scale_model(2.0),
    ("scale", 2): build_scale_model(3.0),
    ("add", 1): build_add_model(),
    ("text", 1): build_text_model(),
}


# -- the apps ------------------------------------------------------------------------------------------------


def _parse_body(raw: bytes) -> tuple[Any, str | None]:
    """The body as docs/flask.md and docs/django.md parse it: JSON, or why not."""
    try:
        return json.loads(raw), None
    except (ValueError, RecursionError) as exc:
        return None, f"the body is not JSON: {type(exc).__name__}"


def _version_of(raw: str | None) -> tuple[int | None, str | None]:
    """The ``version`` query parameter as the app's view reads it (digits only, at most 40 of them)."""
    if raw is None:
        return None, None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 40):
        return None, "version must be a positive integer"
    return int(raw), None


def _answer(result: inprocserve.Prediction) -> dict[str, Any]:
    return {"version": result.version, "outputs": {name: np.asarray(value).tolist() for name, value in result.items()}}


def build_flask_app(repository: Path) -> Flask:
    # (flask.request, not a module-level request: test_fuzz.py reads every name of this module, and Flask's proxy
    # raises outside a request)
    app = Flask(__name__)
    app.config.update(
        INPROCSERVE_REPOSITORY=str(repository),
        INPROCSERVE_V2_PROTOCOL=True,
        INPROCSERVE_ADMIN_TOKEN=TOKEN,
        MAX_CONTENT_LENGTH=1 << 20,
    )
    Inprocserve(app)

    @app.post("/predict/<model>")
    @app.post("/apredict/<model>")  # (the Django app's async view: the same here)
    def predict_view(model: str) -> Any:
        body, problem = _parse_body(flask.request.get_data())
        version, bad_version = _version_of(flask.request.args.get("version"))
        if problem or bad_version:
            return {"error": "invalid_input", "message": problem or bad_version}, 400
        return _answer(flask_predict(model, body, version=version))

    return app


@csrf_exempt
def django_predict_view(request: HttpRequest, model: str) -> JsonResponse:
    body, problem = _parse_body(request.body)
    version, bad_version = _version_of(request.GET.get("version"))
    if problem or bad_version:
        return JsonResponse({"error": "invalid_input", "message": problem or bad_version}, status=400)
    return JsonResponse(_answer(django_predict(request, model, body, version=version)))


@csrf_exempt
async def django_apredict_view(request: HttpRequest, model: str) -> JsonResponse:
    body, problem = _parse_body(request.body)
    version, bad_version = _version_of(request.GET.get("version"))
    if problem or bad_version:
        return JsonResponse({"error": "invalid_input", "message": problem or bad_version}, status=400)
    return JsonResponse(_answer(await django_apredict(request, model, body, version=version)))


urlpatterns = [  # (this module is the Django URLconf of the properties below)
    path("predict/<str:model>", django_predict_view),
    path("apredict/<str:model>", django_apredict_view),
    path("-/inprocserve/", include("inprocserve_django.urls")),
    path("", include("inprocserve_django.v2_urls")),
]


# -- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("http-fuzz") / "models"
    for (name, version), model in VERSIONS.items():
        save_model(model, folder, name, version)
    (folder / "scale" / "config.toml").write_text('version_policy = "all"\n')  # (both versions: pinned ones too)
    return folder


@pytest.fixture(scope="module")
def raw(repository: Path) -> dict[tuple[str, int], ort.InferenceSession]:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    return {
        key: ort.InferenceSession(
            str(repository / key[0] / str(key[1]) / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        for key in VERSIONS
    }


@pytest.fixture(scope="module")
def worker() -> Iterator[ThreadPoolExecutor]:
    """The thread every request runs on, so that a hang fails the example instead of holding the test run."""
    with ThreadPoolExecutor(1, thread_name_prefix="http-fuzz-client") as pool:
        yield pool


Send = Callable[..., tuple[int, dict[str, str], bytes]]
"""``send(method, path, body, headers)`` -> status, headers, body."""


@pytest.fixture(scope="module")
def flask_send(repository: Path, worker: ThreadPoolExecutor) -> Iterator[Send]:
    app = build_flask_app(repository)
    client = app.test_client()

    def send(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
        response = client.open(url, method=method, data=body, headers=headers or {})
        return response.status_code, dict(response.headers), response.get_data()

    yield _guarded(send, worker, "flask")
    Inprocserve.close(app)


@pytest.fixture(scope="module")
def django_send(repository: Path, worker: ThreadPoolExecutor) -> Iterator[Send]:
    yield from _django_sender(repository, worker, asgi=False)


@pytest.fixture(scope="module")
def django_asgi_send(repository: Path, worker: ThreadPoolExecutor) -> Iterator[Send]:
    yield from _django_sender(repository, worker, asgi=True)


def _django_sender(repository: Path, worker: ThreadPoolExecutor, *, asgi: bool) -> Iterator[Send]:
    """Django's test client through its WSGI handler, or ``AsyncClient`` through its ASGI handler."""
    config = {"REPOSITORY": str(repository), "V2_PROTOCOL": True, "ADMIN_TOKEN": TOKEN}
    with override_settings(INPROCSERVE=config, ROOT_URLCONF=__name__):
        reset_server()
        client = AsyncClient(raise_request_exception=True) if asgi else Client(raise_request_exception=True)

        def send(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
            content_type = (headers or {}).get("Content-Type", "application/octet-stream")
            extra = {k: v for k, v in (headers or {}).items() if k.lower() != "content-type"}
            answer = client.generic(method, url, body, content_type=content_type, headers=extra)
            response = asyncio.run(answer) if asgi else answer
            return response.status_code, dict(response.headers), response.content

        try:
            yield _guarded(send, worker, "django")
        finally:
            reset_server()


def _guarded(send: Callable[..., Any], worker: ThreadPoolExecutor, plugin: str) -> Send:
    def guarded(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
        future = worker.submit(send, method, url, body, headers)
        started = time.monotonic()
        try:
            return future.result(timeout=HANG_S)
        except TimeoutError:
            raise AssertionError(f"{method} {url} hung for {time.monotonic() - started:.0f} s") from None

    guarded.plugin = plugin  # type: ignore[attr-defined]
    guarded.direct = send  # type: ignore[attr-defined]  # (on the caller's own thread: requests at once)
    return guarded


@pytest.fixture(params=["flask", "django", "django_asgi"])
def send(request: pytest.FixtureRequest, raw: dict[tuple[str, int], ort.InferenceSession]) -> Iterator[Send]:
    """Each plug-in's app; a plain request answers correctly before and after the property, and the property
    leaves no thread behind."""
    sender: Send = request.getfixturevalue(f"{request.param}_send")
    _plain_requests_answer(sender, raw)
    before = {thread.ident for thread in threading.enumerate()}
    yield sender
    _plain_requests_answer(sender, raw)
    gc.collect()  # (asgiref leaves each async view's loop thread to its executor's collection)
    deadline = time.monotonic() + 10
    while True:
        # (the server's own threads, started once per version when first needed, stay: a version's batch workers
        # and its deadline watchdog; at most a few per version, whatever the number of requests)
        left = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
        strays = [t.name for t in left if not t.name.startswith("inprocserve-")]
        if not strays or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not strays, f"threads left behind: {strays}"
    assert len(left) <= 4 * len(VERSIONS), f"the server's threads grew: {sorted(t.name for t in left)}"


def _plain_requests_answer(send: Send, raw: dict[tuple[str, int], ort.InferenceSession]) -> None:
    rows = [[1.0, 2.0, 3.0, 4.0]]
    for view in ("predict", "apredict"):  # (the async view's first call starts asgiref's lasting thread)
        status, _, body = send("POST", f"/{view}/scale?version=1", json.dumps({"x": rows}).encode())
        assert status == 200, body
        assert json.loads(body)["outputs"]["y"] == [[2.0, 4.0, 6.0, 8.0]]
    request = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": rows[0]}]}
    status, headers, body = send("POST", "/v2/models/scale/versions/1/infer", json.dumps(request).encode())
    assert status == 200, body
    assert v2.decode_infer_response(body, headers).outputs["y"].tolist() == [[2.0, 4.0, 6.0, 8.0]]


# -- what every answer must be -------------------------------------------------------------------------------


def refused_or_none(status: int, body: bytes, *, deadline: bool = False) -> dict[str, Any] | None:
    """``None`` for a 2xx; for anything else, the JSON error body of a 4xx (or a deadline's 504), checked."""
    if 200 <= status < 300:
        return None
    allowed = 400 <= status < 500 or (deadline and status == 504)
    assert allowed, f"answered {status}: {body[:2000]!r}"
    document = json.loads(body)
    assert isinstance(document, dict) and isinstance(document.get("error"), str) and document["error"], body[:500]
    message = document.get("message", document["error"])
    assert isinstance(message, str) and message.strip(), body[:500]
    return document


def expected_outputs(session: ort.InferenceSession, inputs: Any) -> dict[str, np.ndarray]:
    """What onnxruntime answers for values the server accepted, cast as the signature casts them."""
    feeds = inputs if isinstance(inputs, dict) else {session.get_inputs()[0].name: inputs}
    cast = {}
    for node in session.get_inputs():
        dtype = {"tensor(float)": np.float32, "tensor(string)": object}.get(node.type, np.int64)
        with np.errstate(over="ignore", invalid="ignore"):
            cast[node.name] = np.asarray(feeds[node.name]).astype(dtype)
    outputs = session.run(None, cast)
    return {node.name: value for node, value in zip(session.get_outputs(), outputs, strict=True)}


# -- strategies ----------------------------------------------------------------------------------------------

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=6)  # (lone surrogates too)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-10, 10, allow_nan=False),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 3),
    st.sampled_from([10**30, -(10**30), 2**63, 2**64, -(2**63) - 1, 3.5e38, -3.5e38, 1e-46]),
)
json_scalars = st.one_of(numbers, st.booleans(), st.none(), any_text)
json_trees = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(any_text, inner, max_size=4)),
    max_leaves=30,
)
row_of_4 = st.lists(st.one_of(numbers, st.floats(-1e6, 1e6)), min_size=4, max_size=4)
# values shaped as the models take them, or nearly: the numbers decide
tensors = st.one_of(
    st.lists(row_of_4, min_size=1, max_size=3),
    st.lists(st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=6), min_size=0, max_size=3),
    st.lists(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=1), min_size=1, max_size=3),
    json_trees,
)
input_names = st.one_of(st.sampled_from(["x", "a", "b", "n"]), any_text)
SIGNATURES = {"scale": {"x": 4}, "add": {"a": 3, "b": 3, "n": 1}, "text": {"s": 1}}
"""Each model's inputs and their widths (every input is [batch, width])."""


@st.composite
def model_inputs(draw: st.DrawFn, model: str) -> Any:
    """Inputs for ``model``, mostly of the shapes it takes with hostile values, sometimes anything at all."""
    widths = SIGNATURES.get(model, {"x": 4})
    if draw(st.integers(0, 5)) == 0:
        return draw(st.one_of(st.dictionaries(input_names, tensors, max_size=4), tensors))
    rows = draw(st.integers(0, 3))
    inputs: dict[str, Any] = {}
    for name, width in widths.items():
        cells = {"n": st.integers(-(2**62), 2**62), "s": any_text}.get(name, st.floats(-1e6, 1e6))
        if draw(st.integers(0, 3)) == 0:
            cells = st.one_of(cells, json_scalars)
        wide = width if draw(st.integers(0, 5)) else draw(st.integers(0, 6))
        inputs[name] = draw(st.lists(st.lists(cells, min_size=wide, max_size=wide), min_size=rows, max_size=rows))
    if len(inputs) == 1 and draw(st.integers(0, 3)) == 0:
        return next(iter(inputs.values()))  # (a bare array, for a model of one input)
    if draw(st.integers(0, 5)) == 0:
        inputs[draw(input_names)] = draw(tensors)
    return inputs


def _json_bytes(document: Any) -> bytes:
    return json.dumps(document, allow_nan=True).encode("utf-8", "surrogatepass")


raw_bodies = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"",
            b"{",
            b"\xff\xfe\x00",
            b'{"x": [[1, 2, 3, 4]], "x": [[5, 6, 7, 8]]}',  # a key twice
            b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser's stack
            b'{"x": [[1e400, 2, 3, 4]]}',
            b'{"x": [[' + b"9" * 5000 + b", 2, 3, 4]]}",  # more digits than Python converts
            b'{"x": "\\ud800"}',
            '{"x": [["é", 1, 2, 3]]}'.encode("latin-1"),
        ]
    ),
)
header_text = st.text(st.characters(min_codepoint=0, max_codepoint=0xFF, exclude_characters="\r\n"), max_size=30)
content_types = st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "", "x/y; a=b"]
)
request_headers = st.fixed_dictionaries(
    {},
    optional={
        "X-User-Id": st.one_of(header_text, st.just("user-42")),
        "X-Request-Timeout-Ms": st.one_of(header_text, st.from_regex(r"[0-9]{1,10}(\.[0-9]{1,7})?", fullmatch=True)),
        "Content-Type": content_types,
        "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity", "x-gzip", ""]),
        "Transfer-Encoding": st.sampled_from(["chunked", "gzip, chunked", "identity", "\xff"]),
        "Authorization": st.one_of(header_text, st.just(f"Bearer {TOKEN}")),
        "Accept": st.sampled_from(["application/json", "*/*", "text/html", "\x00"]),
    },
)
model_names = st.one_of(st.sampled_from(["scale", "add", "nope"]), any_text.filter(lambda s: "/" not in s and s))
versions = st.one_of(st.none(), st.sampled_from(["1", "2", "3", "0", "01", "10" * 15, "-1", "abc", "\u0661"]))


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text.encode("utf-8", "surrogatepass"), safe="")


# -- the predict view ----------------------------------------------------------------------------------------


usual_models = st.one_of(st.sampled_from(["scale", "add", "text"]), st.sampled_from(["scale", "add"]), model_names)
usual_versions = st.one_of(st.none(), st.none(), st.none(), st.sampled_from(["1", "2"]), versions)
usual_headers = st.one_of(st.just({}), st.just({}), request_headers)


@st.composite
def predict_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    model = draw(usual_models)
    if draw(st.integers(0, 7)) == 0:
        return model, draw(raw_bodies)
    return model, _json_bytes(draw(model_inputs(model)))


@given(case=predict_requests(), version=usual_versions, headers=usual_headers, use_async=st.booleans())
@FUZZ
def test_a_view_handing_any_body_to_predict_is_answered_correctly_or_refused(
    send: Send,
    raw: dict[tuple[str, int], ort.InferenceSession],
    case: tuple[str, bytes],
    version: str | None,
    headers: dict[str, str],
    use_async: bool,
) -> None:
    model, body = case
    view = "apredict" if use_async else "predict"
    query = "" if version is None else f"?version={_quote(version)}"
    status, _, answer = send("POST", f"/{view}/{_quote(model)}{query}", body, headers)
    if refused_or_none(status, answer, deadline="X-Request-Timeout-Ms" in headers) is not None:
        return
    document = json.loads(answer)
    inputs = json.loads(body)
    expected = expected_outputs(raw[model, document["version"]], inputs)
    assert set(document["outputs"]) == set(expected)
    for name, array in expected.items():
        np.testing.assert_array_equal(np.asarray(document["outputs"][name], dtype=array.dtype), array)


# -- the Open Inference Protocol -----------------------------------------------------------------------------

DATATYPE_NAMES = [*v2.DATATYPES, "FP8", "fp32", "", "STRING", "BF16"]
shapes = st.one_of(
    st.sampled_from([[1, 4], [2, 4], [3, 1], [1, 3], [4], [], [0, 4], [2, 2]]),
    st.lists(st.one_of(st.integers(-2, 5), st.sampled_from([10**30, 2**24 + 1, True, 1.0, "2", None])), max_size=5),
)
parameter_values = st.one_of(json_scalars, st.lists(st.integers(), max_size=2), st.dictionaries(any_text, st.none()))
parameters = st.dictionaries(
    st.one_of(
        st.sampled_from(["timeout", "user_id", "binary_data_output", "sequence_id", "binary_data_size"]), any_text
    ),
    parameter_values,
    max_size=3,
)


NUMERIC = [name for name in v2.DATATYPES if name != "BYTES"]


def _tensor(draw: st.DrawFn, name: str, width: int, rows: int, binary: list[bytes]) -> dict[str, Any]:
    """One input tensor for a model that takes [batch, ``width``], mostly well-formed, its values hostile."""
    usual = {"n": "INT64", "s": "BYTES"}.get(name, "FP32")
    datatype = usual if draw(st.integers(0, 5)) else draw(st.sampled_from(DATATYPE_NAMES))
    shape: Any = [rows, width] if draw(st.integers(0, 5)) else draw(shapes)
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    sizes = (
        [d for d in shape if isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 64]
        if isinstance(shape, list)
        else []
    )
    count = int(np.prod(sizes)) if draw(st.integers(0, 5)) else draw(st.integers(0, 9))
    how = draw(st.sampled_from(["json", "json", "json", "binary", "binary", "odd"]))
    if how == "binary" and datatype == "BYTES":
        texts = draw(st.lists(st.binary(max_size=5), min_size=count, max_size=count))
        chunk = b"".join(len(text).to_bytes(4, "little") + text for text in texts)
        if draw(st.integers(0, 4)) == 0:
            chunk = draw(st.binary(max_size=12))
        binary.append(chunk)
        tensor["parameters"] = {"binary_data_size": len(chunk)}
    elif how == "binary" and datatype in NUMERIC:
        dtype = v2.DATATYPES[datatype]
        if draw(st.booleans()):  # (values as numbers of the datatype: infinities, NaN, extremes)
            values = draw(st.lists(st.floats(width=16 if dtype.itemsize == 2 else 64), min_size=count, max_size=count))
            with np.errstate(all="ignore"):
                chunk = np.asarray(values, dtype=np.float64).astype(dtype).astype(dtype.newbyteorder("<")).tobytes()
        else:
            size = count * dtype.itemsize
            chunk = (
                draw(st.binary(min_size=size, max_size=size))
                if draw(st.integers(0, 4))
                else draw(st.binary(max_size=9))
            )
        binary.append(chunk)
        size_parameter = len(chunk) if draw(st.integers(0, 4)) else draw(st.sampled_from([len(chunk) + 1, -1, 0, True]))
        tensor["parameters"] = {"binary_data_size": size_parameter}
    elif how == "odd":
        tensor["data"] = draw(json_trees)
        if draw(st.booleans()):
            tensor["parameters"] = draw(parameters)
    else:
        cells = {"INT64": st.integers(-(2**63), 2**64), "BYTES": any_text}.get(usual, st.floats(-1e6, 1e6))
        if draw(st.integers(0, 3)) == 0:
            cells = st.one_of(cells, numbers, json_scalars)
        values = draw(st.lists(cells, min_size=count, max_size=count))
        nested = [values[i * width : (i + 1) * width] for i in range(rows)] if len(values) == rows * width else values
        tensor["data"] = draw(st.sampled_from([values, nested]))
    return tensor


@st.composite
def infer_requests(draw: st.DrawFn, model: str) -> tuple[bytes, dict[str, str]]:
    """A protocol inference request for ``model``: a JSON document, maybe with binary tensors after it, and its
    headers; mostly well-formed, with hostile values, sometimes anything at all."""
    document: dict[str, Any] = {}
    binary: list[bytes] = []
    rows = draw(st.integers(0, 3)) if draw(st.integers(0, 4)) == 0 else draw(st.integers(1, 3))
    widths = dict(SIGNATURES.get(model, {"x": 4}))
    if draw(st.integers(0, 5)) == 0:
        widths = {draw(input_names): draw(st.integers(0, 5)) for _ in range(draw(st.integers(0, 3)))}
    sent = [_tensor(draw, name, width, rows, binary) for name, width in widths.items()]
    document["inputs"] = sent if draw(st.integers(0, 9)) else draw(json_trees)
    if draw(st.integers(0, 3)) == 0:
        document["parameters"] = draw(st.one_of(parameters, parameters, json_trees))
    if draw(st.integers(0, 2)) == 0:
        known = {"scale": ["y"], "text": ["t"]}.get(model, ["total", "count"])
        outputs = st.fixed_dictionaries(
            {"name": st.one_of(st.sampled_from(known), st.sampled_from(known), any_text)},
            optional={"parameters": st.one_of(parameters, st.just({"binary_data": True}), st.just({}))},
        )
        document["outputs"] = draw(st.one_of(st.lists(outputs, max_size=3, unique_by=lambda o: o["name"]), json_trees))
    if draw(st.integers(0, 3)) == 0:
        document["id"] = draw(st.one_of(any_text, any_text, json_scalars))
    text = _json_bytes(document)
    headers: dict[str, str] = {"Content-Type": draw(content_types)} if draw(st.booleans()) else {}
    if binary or draw(st.integers(0, 4)) == 0:
        headers[v2.HEADER_LENGTH] = draw(
            st.one_of(
                st.just(str(len(text))),
                st.just(str(len(text))),
                st.just(str(len(text))),
                st.just(str(len(text))),
                st.integers(-5, len(text) + 5).map(str),
                header_text,
                st.sampled_from(["1" * 30, " 12 ", "+12", "0x10", "\u0661".encode().decode("latin-1")]),
            )
        )
    body = text + b"".join(binary)
    encoding = draw(st.sampled_from(["", "", "", "", "", "gzip", "deflate", "bogus"]))
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)
    if encoding:
        headers["Content-Encoding"] = (
            encoding if draw(st.integers(0, 3)) else draw(st.sampled_from(["gzip", "deflate"]))
        )
    if draw(st.integers(0, 7)) == 0:
        headers.update(draw(request_headers))
    return body, headers


@st.composite
def infer_cases(draw: st.DrawFn) -> tuple[str, str | None, bytes, dict[str, str]]:
    model = draw(usual_models)
    version = draw(usual_versions)
    body, headers = draw(infer_requests(model))
    return model, version, body, headers


@given(case=infer_cases())
@FUZZ
def test_any_protocol_inference_request_is_answered_correctly_or_refused(
    send: Send,
    raw: dict[tuple[str, int], ort.InferenceSession],
    case: tuple[str, str | None, bytes, dict[str, str]],
) -> None:
    model, version, body, headers = case
    pinned = "" if version is None else f"/versions/{_quote(version)}"
    status, answer_headers, answer = send("POST", f"/v2/models/{_quote(model)}{pinned}/infer", body, headers)
    if refused_or_none(status, answer, deadline=True) is not None:
        return
    decoded_body = zlib.decompressobj(47).decompress(body) if headers.get("Content-Encoding") else body
    sent = v2.decode_infer_request(decoded_body, headers)
    response = v2.decode_infer_response(answer, answer_headers)
    expected = expected_outputs(raw[model, int(response.model_version or 0)], sent.inputs)
    wanted = set(expected) if sent.outputs is None else {output.name for output in sent.outputs}
    assert set(response.outputs) == wanted
    for name in wanted:
        np.testing.assert_array_equal(response.outputs[name], expected[name])


@given(
    cases=st.lists(
        st.one_of(predict_requests().map(lambda case: ("predict", case)), infer_cases().map(lambda case: ("v2", case))),
        min_size=2,
        max_size=8,
    )
)
@settings(FUZZ, max_examples=max(10, EXAMPLES // 5))
def test_hostile_and_plain_requests_at_once_are_each_answered_as_if_alone(
    send: Send, raw: dict[tuple[str, int], ort.InferenceSession], cases: list[tuple[str, Any]]
) -> None:
    """Requests of many threads at once, a plain one among hostile ones: the server merges those it accepts into
    batched runs, and each still gets its own rows' answer (the plain one always), or a 4xx of its own."""
    direct: Send = send.direct  # type: ignore[attr-defined]
    plain = json.dumps({"x": [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]}).encode()

    def one(kind: str, case: Any) -> None:
        if kind == "predict":
            model, body = case
            status, _, answer = direct("POST", f"/predict/{_quote(model)}", body)
            if refused_or_none(status, answer) is None:
                document = json.loads(answer)
                expected = expected_outputs(raw[model, document["version"]], json.loads(body))
                for name, array in expected.items():
                    np.testing.assert_array_equal(np.asarray(document["outputs"][name], dtype=array.dtype), array)
        else:
            model, _, body, headers = case
            status, answer_headers, answer = direct("POST", f"/v2/models/{_quote(model)}/infer", body, headers)
            if refused_or_none(status, answer, deadline=True) is None:
                decoded_body = zlib.decompressobj(47).decompress(body) if headers.get("Content-Encoding") else body
                sent = v2.decode_infer_request(decoded_body, headers)
                response = v2.decode_infer_response(answer, answer_headers)
                expected = expected_outputs(raw[model, int(response.model_version or 0)], sent.inputs)
                for name, array in response.outputs.items():
                    np.testing.assert_array_equal(array, expected[name])

    def plain_one() -> None:
        status, _, answer = direct("POST", "/predict/scale?version=1", plain)
        assert status == 200, answer
        assert json.loads(answer)["outputs"]["y"] == [[2.0, 4.0, 6.0, 8.0], [10.0, 12.0, 14.0, 16.0]]

    calls = [functools.partial(one, kind, case) for kind, case in cases]
    calls.insert(len(calls) // 2, plain_one)
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], None]) -> None:
        barrier.wait(HANG_S)
        call()

    with ThreadPoolExecutor(len(calls), thread_name_prefix="http-fuzz-caller") as pool:
        for future in [pool.submit(run, call) for call in calls]:
            future.result(timeout=2 * HANG_S)


odd_segments = st.one_of(
    st.sampled_from(["..", ".", "%2e%2e", "%00", "scale%00", "%0A", "10" * 15, "1" + "0" * 30, "%ff", "%c0%af"]),
    any_text.filter(bool).map(_quote),
)


@given(
    name=st.one_of(st.sampled_from(["scale", "add"]), odd_segments),
    version=st.one_of(st.none(), st.sampled_from(["1", "2", "0", "-1", "01"]), odd_segments),
    tail=st.sampled_from(["", "/ready", "/infer", "/ready/", "/x", "//ready"]),
    head=st.sampled_from(["/v2/models/", "/v2/models/", "/v2//models/", "/v2/models//"]),
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
)
@FUZZ
def test_protocol_metadata_and_readiness_of_any_name_and_version_are_answered_or_refused(
    send: Send, name: str, version: str | None, tail: str, head: str, method: str
) -> None:
    url = f"{head}{name}" + ("" if version is None else f"/versions/{version}") + tail
    status, _, answer = send(method, url, b"" if method != "POST" else b"{}")
    if method == "HEAD" or (method == "OPTIONS" and status == 200):
        assert status < 500, (url, status)
        return
    document = refused_or_none(status, answer)
    if document is None:
        assert json.loads(answer)["name"] == name
    elif status == 503:  # (never: every model here is ready)
        raise AssertionError(answer)


# -- the admin endpoints -------------------------------------------------------------------------------------

admin_bodies = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "version": st.one_of(st.sampled_from([1, 2, 3, None, "config", 10**30, 0, -1, True, 1.5]), json_scalars),
            "percent": st.one_of(st.sampled_from([0, 5, 50, 100, 101, -1, 1e400, 10**400]), json_scalars),
            "force": st.one_of(st.booleans(), json_scalars),
        },
    ).map(_json_bytes),
    json_trees.map(_json_bytes),
    raw_bodies,
)


@given(
    action=st.sampled_from(["switch", "rollback", "canary", "kill", "resume", "reload", "nope"]),
    name=st.one_of(st.sampled_from(["scale", "add", "nope"]), odd_segments),
    body=admin_bodies,
    authorization=st.one_of(
        st.just(f"Bearer {TOKEN}"), st.just(f"Bearer {TOKEN}"), header_text, st.just("Basic \xff"), st.none()
    ),
    content_encoding=st.sampled_from([None, None, None, "gzip", "identity", "\xe9"]),
)
@example(
    action="canary",
    name="scale",
    body=b'{"version": 2, "percent": 10}',
    authorization=f"Bearer {TOKEN}",
    content_encoding=None,
)
@FUZZ
def test_any_admin_request_is_answered_or_refused_as_json(
    send: Send, action: str, name: str, body: bytes, authorization: str | None, content_encoding: str | None
) -> None:
    url = "/-/inprocserve/reload" if action == "reload" else f"/-/inprocserve/models/{name}/{action}"
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    if content_encoding is not None:
        headers["Content-Encoding"] = content_encoding
    status, _, answer = send("POST", url, body, headers)
    if send.plugin == "django" and status == 404 and (action == "nope" or "%2F" in name):  # type: ignore[attr-defined]
        return  # (no URL pattern of the plug-in's: the project's own 404, which the plug-in leaves to it)
    document = refused_or_none(status, answer)
    if document is None:
        assert isinstance(json.loads(answer)["revision"], int)


@pytest.mark.parametrize("path", ["models/scale%2F/kill", "models/scale//switch", "models//scale/canary", "/reload"])
def test_an_admin_path_with_an_empty_segment_is_a_json_404_not_a_redirect_to_another_model(
    tmp_path: Path, path: str
) -> None:
    # models/scale%2F/kill names a model "scale/", which cannot exist; it arrives as models/scale//kill, and werkzeug
    # answered it with a 308 to models/scale/kill: a client that follows redirects killed model "scale"
    save_model(VERSIONS["scale", 1], tmp_path, "scale", 1)
    app = build_flask_app(tmp_path)
    try:
        response = app.test_client().post(
            f"/-/inprocserve/{path}", json={"version": 1}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 404, (response.status_code, response.headers.get("Location"))
        assert response.get_json()["error"] == "not_found"
        assert not (tmp_path / ".inprocserve-control.json").exists()  # nothing done
    finally:
        Inprocserve.close(app)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v2//models/scale/ready"), ("POST", "/v2//models/scale/infer"), ("GET", "/v2//health/ready")],
)
def test_a_protocol_path_with_an_empty_segment_is_the_protocols_json_404(
    flask_send: Send, method: str, path: str
) -> None:
    # Flask answered /v2//models/scale/ready with werkzeug's HTML 308 to /v2/models/scale/ready, where it answers
    # /v2/models/scale//ready, and the Django plug-in both, with the protocol's JSON 404
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    status, headers, answer = flask_send(method, path, body.encode() if method == "POST" else b"")
    assert status == 404, (status, headers.get("Location"))
    assert "no Open Inference Protocol endpoint" in json.loads(answer)["error"]


EXACT = "<the body's length>"
"""A ``length`` drawn below that stands for the body's own length, in digits."""


class _GoneClient(io.RawIOBase):
    """A request body whose client went away after ``data``: gunicorn's reads raise ``NoMoreData``, an IOError."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._data:
            raise OSError("No more data")
        size = min(len(buffer), len(self._data), 7)
        buffer[:size] = self._data[:size]
        self._data = self._data[size:]
        return size


@given(
    url=st.sampled_from(["/v2/models/scale/infer", "/-/inprocserve/models/scale/switch", "/-/inprocserve/reload"]),
    length=st.one_of(
        st.none(),
        header_text,
        st.integers(-2, 200).map(str),
        st.sampled_from(["9" * 30, "", " ", "\t", "1e2", " 5 ", EXACT, f" {EXACT} "]),
    ),
    chunked=st.one_of(st.none(), st.sampled_from(["chunked", "gzip, chunked", ""])),
    terminated=st.booleans(),
    gone=st.booleans(),
)
# (the framings a real server hands on, each drawn about once in a hundred: chunked input gunicorn ends, a length)
@example(url="/v2/models/scale/infer", length=None, chunked="chunked", terminated=True, gone=False)
@example(url="/-/inprocserve/models/scale/switch", length="", chunked="chunked", terminated=True, gone=False)
@example(url="/-/inprocserve/models/scale/switch", length=f" {EXACT} ", chunked=None, terminated=False, gone=False)
@FUZZ
def test_any_django_wsgi_framing_of_a_body_is_answered_or_refused_as_json(
    django_send: Send, url: str, length: str | None, chunked: str | None, terminated: bool, gone: bool
) -> None:
    """What a WSGI server hands Django about a body (its CONTENT_LENGTH as sent, Transfer-Encoding, whether the
    server ends the input itself, a client gone mid-upload): a 2xx or a JSON 4xx, never a 500; and a 2xx for a
    whole body the plug-in can find the end of (its length, or chunked input the server ends)."""
    plain = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    body = json.dumps(plain if url.startswith("/v2") else {"version": 1}).encode()
    if length is not None:
        length = length.replace(EXACT, str(len(body)))
    declared = (length or "").strip()
    readable = declared == str(len(body)) or (not declared and chunked == "chunked" and terminated)
    environ: dict[str, Any] = {"wsgi.input": _GoneClient(body) if gone else io.BytesIO(body)}
    environ["CONTENT_LENGTH"] = length  # (None: no header; Django's Client sets one where this does not)
    if chunked is not None:
        environ["HTTP_TRANSFER_ENCODING"] = chunked
    if terminated:
        environ["wsgi.input_terminated"] = True
    if length is None:
        del environ["CONTENT_LENGTH"]
    response = Client(raise_request_exception=False).generic(
        "POST", url, b"", content_type="application/json", headers={"Authorization": f"Bearer {TOKEN}"}, **environ
    )
    document = refused_or_none(response.status_code, response.content)
    if readable and not gone:  # (a 4xx is not enough here: a body read as empty was a 400 "no version", a 411)
        assert document is None, (response.status_code, document)


@pytest.mark.parametrize("length", [" ", "\t"])
def test_a_blank_content_length_at_a_django_admin_endpoint_is_a_400_not_a_500(django_send: Send, length: str) -> None:
    # request.body reads int(CONTENT_LENGTH), which fails for a blank one (a ValueError, a 500): a WSGI server may
    # hand a blank header on, which the plug-in takes for none, as its protocol view does
    response = Client(raise_request_exception=False).generic(
        "POST",
        "/-/inprocserve/models/scale/switch",
        b'{"version": 1}',
        content_type="application/json",
        headers={"Authorization": f"Bearer {TOKEN}"},
        CONTENT_LENGTH=length,
    )
    assert response.status_code == 400, response.content[:300]
    assert '"version" must be a positive int' in response.json()["message"]  # (no body: no version)


def test_a_django_protocol_request_with_no_body_and_no_length_is_a_400_saying_it_is_empty(django_send: Send) -> None:
    # (neither a Content-Length nor chunked: HTTP's empty body, as the Flask plug-in reads it; it was a 411 telling
    # the client that the server cannot end a chunked body, which none was)
    response = Client().generic("POST", "/v2/models/scale/infer", b"")
    assert "CONTENT_LENGTH" not in response.wsgi_request.META
    assert response.status_code == 400, response.content[:300]
    assert "the request body is empty" in response.json()["error"]
