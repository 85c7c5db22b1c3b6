"""The Open Inference Protocol endpoints read as hostile input, against the protocol's text: requests the
endpoints refused that ``Server.predict`` serves, and refusals that were no 400 saying what to fix."""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

import inprocserve
from inprocserve import v2
from inprocserve.testing import build_scale_model, save_model

from .conftest import HELD_MARK, ServerFactory, SessionHolder, busy_inputs, rollout, wait_until
from .test_config import _rows_against_a_table
from .test_telemetry import Otel, _outcomes

# The process-wide SDK (providers can be set once per process), as a fixture:
from .test_telemetry import otel as otel
from .test_v2_codec import call


def test_a_table_declared_before_the_rows_is_not_held_to_max_request_rows(
    repository: Path, make_server: ServerFactory
) -> None:
    # scores[batch, k] = x[batch, 4] @ table[k, 4]^T: the rows are x's; predict serves a table of any size, the
    # protocol's header check took the first input's axis 0 (the table's entries) for the rows
    save_model(_rows_against_a_table(table_first=True), repository, "match", 1)
    config = inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_request_rows=2))
    server = make_server(repository, models={"match": config})
    endpoints = v2.Endpoints(lambda: server)

    def infer(rows: int, entries: int) -> tuple[int, dict[str, object]]:
        tensors = [("x", rows), ("table", entries)]
        inputs = [{"name": n, "shape": [k, 4], "datatype": "FP32", "data": [1.0] * 4 * k} for n, k in tensors]
        status, document, _ = call(endpoints, "POST", "/v2/models/match/infer", json.dumps({"inputs": inputs}).encode())
        return status, document

    for entries in (5, 0):
        status, document = infer(1, entries)
        assert status == 200, document
        assert document["outputs"] == [
            {"name": "scores", "datatype": "FP32", "shape": [1, entries], "data": [4.0] * entries}
        ]
    status, document = infer(3, 1)  # the rows are still bounded
    assert (status, document["error"]) == (
        400,
        "model 'match' version 1: the request has 3 rows, more than the 2 allowed per request "
        "(batching.max_request_rows); split it into smaller requests",
    )


@pytest.mark.parametrize("off_by", [-1, -40, 1, 2])
def test_a_json_part_cut_wrong_by_the_inference_header_length_names_that_header(off_by: int) -> None:
    # a client whose Inference-Header-Content-Length is off (counted in characters, not bytes, or before a field
    # was added) sent well-formed JSON, and was told "the request JSON is malformed: Extra data" or
    # "Unterminated string": nothing pointed at the header that cut it
    x = triton.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
    body, json_length = triton.InferenceServerClient.generate_request_body([x])
    assert json_length is not None
    with pytest.raises(inprocserve.InvalidInputError) as refused:
        v2.decode_infer_request(body, {v2.HEADER_LENGTH: str(json_length + off_by)})
    assert str(refused.value).startswith("the request JSON is malformed: ")
    assert str(refused.value).endswith(
        f"; it is the body's first {json_length + off_by} bytes, as {v2.HEADER_LENGTH} says: check that the header "
        "counts the JSON's bytes exactly"
    )


def test_a_pinned_request_to_a_version_unloaded_by_hand_is_told_so_not_sent_to_the_version_policy(
    repository: Path, make_server: ServerFactory
) -> None:
    # the policy is "all" already: the 404 told the client to set version_policy = "all" in config.toml
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    server = make_server(repository, config=inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all()))
    server.unload("scale", 1)
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    status, document, _ = call(v2.Endpoints(lambda: server), "POST", "/v2/models/scale/versions/1/infer", body.encode())
    assert status == 404
    assert "version_policy" not in document["error"], document
    assert "unloaded" in document["error"], document
    assert "Server.load('scale', version=1) serves it again" in document["error"], document
    with pytest.raises(inprocserve.ModelNotFoundError, match=r"was unloaded \(Server\.unload\)"):
        server.predict("scale", np.ones((1, 4), dtype=np.float32), version=1)
    server.load("scale", version=1)
    assert server.predict("scale", np.ones((1, 4), dtype=np.float32), version=1).version == 1


def _float8_model() -> object:
    """``y = float8(x)`` (FLOAT8E4M3FN, which onnxruntime answers as numpy uint8: the raw bits) and ``z = x``."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT8E4M3FN, ["batch", 2])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 2])
    nodes = [
        helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E4M3FN),
        helper.make_node("Identity", ["x"], ["z"]),
    ]
    graph = helper.make_graph(nodes, "float8", [x], [y, z])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.mark.parametrize("binary", [False, True])
def test_a_float8_output_is_never_sent_as_uint8(repository: Path, make_server: ServerFactory, binary: bool) -> None:
    # onnxruntime answers a float8 tensor as uint8 (its bits): the protocol answered it as UINT8, [60, 192] for
    # [1.5, -2.0], numbers a client took for the model's, while the metadata said tensor(float8e4m3fn)
    save_model(_float8_model(), repository, "f8", 1)
    endpoints = v2.Endpoints(lambda: make_server(repository))
    x = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.5, -2.0]}
    y = {"name": "y", "parameters": {"binary_data": binary}}
    status, document, _ = call(endpoints, "GET", "/v2/models/f8")
    assert [o["datatype"] for o in document["outputs"]] == ["tensor(float8e4m3fn)", "FP32"]
    status, document, _ = call(endpoints, "POST", "/v2/models/f8/infer", json.dumps({"inputs": [x]}).encode())
    assert status == 200 and [o["name"] for o in document["outputs"]] == ["z"], document  # what it can carry
    body = json.dumps({"inputs": [x], "outputs": [y]}).encode()
    status, document, _ = call(endpoints, "POST", "/v2/models/f8/infer", body)
    assert (status, document["error"]) == (
        400,
        "output 'y' of model 'f8' is a tensor(float8e4m3fn), which the protocol has no datatype for; "
        "ask for the model's other outputs with 'outputs'",
    )


def canary_with_cache(repository: Path, make_server: ServerFactory) -> tuple[inprocserve.Server, v2.Endpoints]:
    """Model m: version 1 answers y, version 2 (a canary at 0 %) y and z; the cache on; and its /v2 endpoints."""
    save_model(build_scale_model(2.0), repository, "m", 1)
    save_model(_two_output_model(), repository, "m", 2)
    config = dataclasses.replace(
        rollout(strategy="canary", stable=1, canary={"version": 2, "percent": 0}),
        cache=inprocserve.CacheConfig(enabled=True),
    )
    server = make_server(repository, config=config)
    return server, v2.Endpoints(lambda: server)


def test_under_a_canary_an_answer_refused_for_its_outputs_is_cached_as_the_true_answer_of_its_version(
    repository: Path, make_server: ServerFactory
) -> None:
    # A request for z, which only the canary has, is refused after the stable version ran (the version is the
    # request's, decided as it runs). Its answer stays in the stable version's cache: it is that version's own
    # answer to those inputs, so a later request with the same inputs and no output named gets exactly what a
    # run would give it, and a later request for z is refused again, never answered from it.
    server, endpoints = canary_with_cache(repository, make_server)
    x = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    for _ in range(2):
        status, document, _ = call(
            endpoints, "POST", "/v2/models/m/infer", json.dumps({"inputs": [x], "outputs": [{"name": "z"}]}).encode()
        )
        assert status == 400 and "version 1, which answered this request" in document["error"]
    status, document, _ = call(endpoints, "POST", "/v2/models/m/infer", json.dumps({"inputs": [x]}).encode())
    assert status == 200 and document["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
    version = server.status()["models"]["m"]["versions"]["1"]
    cache, latency = version["cache"], version["latency_ms"]
    assert (cache["entries"], cache["misses"], cache["hits"]) == (1, 1, 2)
    assert (latency["count"], latency["errors"]) == (1, 2)  # the refused request answered from the cache too


def test_a_switch_after_the_early_output_check_is_caught_by_the_answer_check(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The early check reads the routes when the body is decoded; the rollout (a control file, a flag) may switch
    # before predict routes. Whatever version runs, its answer is checked against the requested outputs: seen
    # by the early check as answered by version 1 (which has z), run by version 2 (which has not): refused.
    from inprocserve.v2 import _endpoints

    save_model(_two_output_model(), repository, "m", 1)
    save_model(build_scale_model(2.0), repository, "m", 2)
    server = make_server(repository, config=inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all()))
    endpoints = v2.Endpoints(lambda: server)
    monkeypatch.setattr(_endpoints, "_answering", lambda routes: routes.versions[1])  # (the state before a switch)
    x = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    body = json.dumps({"inputs": [x], "outputs": [{"name": "z"}]}).encode()
    status, document, _ = call(endpoints, "POST", "/v2/models/m/infer", body)
    assert status == 400, document
    assert "output 'z' is not an output of model 'm' version 2, which answered this request" in document["error"]
    assert "pin version 1, which has it" in document["error"]


def _two_output_model() -> object:
    from .test_v2_codec import build_two_output_model

    return build_two_output_model()


def test_under_a_canary_a_float8_output_of_the_version_that_answered_is_refused_not_sent_as_uint8(
    repository: Path, make_server: ServerFactory
) -> None:
    # y is float8 in the stable version, FP32 in the canary: a request for y may be answered (by the canary),
    # so it runs; answered by the stable version, it is refused rather than sent as UINT8 bits
    save_model(_float8_model(), repository, "m", 1)
    save_model(build_scale_model(2.0, features=2), repository, "m", 2)
    server = make_server(repository, config=rollout(strategy="canary", stable=1, canary={"version": 2, "percent": 0}))
    endpoints = v2.Endpoints(lambda: server)
    x = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.5, -2.0]}
    body = json.dumps({"inputs": [x], "outputs": [{"name": "y"}]}).encode()
    status, document, _ = call(endpoints, "POST", "/v2/models/m/infer", body)
    assert (status, document["error"]) == (
        400,
        "output 'y' of model 'm' is a tensor(float8e4m3fn), which the protocol has no datatype for; "
        "ask for the model's other outputs with 'outputs'",
    )


def canary_v2_app(repository: Path) -> Any:
    """A Flask app serving ``repository`` with the plug-in, /v2 on, every model's version 1 stable and version 2
    a canary at 0 % (close it with ``Inprocserve.close(app)``)."""
    from flask import Flask
    from inprocserve_flask import Inprocserve

    app = Flask(__name__)
    app.config.update(
        INPROCSERVE_REPOSITORY=str(repository),
        INPROCSERVE_MODEL_CONFIG=rollout(strategy="canary", stable=1, canary={"version": 2, "percent": 0}),
        INPROCSERVE_V2_PROTOCOL=True,
    )
    Inprocserve(app)
    return app


@pytest.mark.parametrize("asked", ["z", "y", "zipped"])
def test_a_request_refused_after_its_run_is_recorded_as_refused_not_as_an_answer(
    otel: Otel, repository: Path, asked: str
) -> None:
    # Under a canary, a request for z (only the canary has it) or y (float8 in the stable version) runs, since
    # the canary may answer it; answered by the stable version, the client gets a 400. status() counted it as
    # an answer (latency count 1, errors 0), and so did its span and the request metrics: an operator read a
    # healthy version while clients were refused.
    from inprocserve_flask import Inprocserve

    model = f"late_{asked}"  # (the metrics are the process's: a name no other test's requests record under)
    x = _versions_apart_on(asked, repository, model)
    app = canary_v2_app(repository)
    try:
        for _ in range(2):  # the first request adopts the runners (predict's full way), the second runs at once
            response = app.test_client().post(
                f"/v2/models/{model}/infer", json={"inputs": [x], "outputs": [{"name": asked}]}
            )
            assert response.status_code == 400, response.json
        server = app.extensions["inprocserve"].server
        latency = server.status()["models"][model]["versions"]["1"]["latency_ms"]
        assert (latency["count"], latency["errors"]) == (0, 2)
        assert _outcomes(otel, model) == {("client_error", "InvalidInputError"): 2}
        spans = [
            dict(span.attributes or {})
            for span in otel.finished("inprocserve.predict")
            if (span.attributes or {}).get("inprocserve.model.name") == model
        ]
        assert [(span["inprocserve.model.version"], span["error.type"]) for span in spans] == [
            (1, "InvalidInputError")
        ] * 2
        response = app.test_client().post(f"/v2/models/{model}/infer", json={"inputs": [x]})  # (no output named)
        assert response.status_code == 200, response.json
        latency = server.status()["models"][model]["versions"]["1"]["latency_ms"]
        assert (latency["count"], latency["errors"]) == (1, 2)
    finally:
        Inprocserve.close(app)


def _versions_apart_on(asked: str, repository: Path, model: str) -> dict[str, object]:
    """Versions 1 and 2 of ``model`` that differ on output ``asked``: z only in version 2, y float8 in version 1
    and FP32 in version 2, or zipped a ZipMap (a sequence of maps) in version 1 and FP32 in version 2; returns an
    input tensor both take."""
    if asked == "z":
        save_model(build_scale_model(2.0), repository, model, 1)
        save_model(_two_output_model(), repository, model, 2)
    elif asked == "y":
        save_model(_float8_model(), repository, model, 1)
        save_model(build_scale_model(2.0, features=2), repository, model, 2)
    else:
        from onnx import TensorProto, helper

        from .test_web_hardening import build_zipmap_model

        save_model(build_zipmap_model(), repository, model, 1)
        x, zipped = (helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2]) for n in ("x", "zipped"))
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["zipped"])], "tensor", [x], [zipped])
        save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), repository, model, 2)
    features = 4 if asked == "z" else 2
    return {"name": "x", "datatype": "FP32", "shape": [1, features], "data": [1.5] * features}


@pytest.mark.parametrize("asked", ["z", "y", "zipped"])
def test_the_django_view_records_a_request_refused_after_its_run_as_refused(repository: Path, asked: str) -> None:
    # the same /v2 endpoints behind Django's view: the refusal after the run is counted once, as an error
    from django.test import Client, override_settings
    from inprocserve_django import get_server, reset_server

    x = _versions_apart_on(asked, repository, "m")
    settings = {
        "REPOSITORY": str(repository),
        "CONFIG": rollout(strategy="canary", stable=1, canary={"version": 2, "percent": 0}),
        "V2_PROTOCOL": True,
    }
    with override_settings(INPROCSERVE=settings):
        try:
            body = json.dumps({"inputs": [x], "outputs": [{"name": asked}]})
            for _ in range(2):  # (the full way, then the shortest)
                response = Client().post("/v2/models/m/infer", body, content_type="application/json")
                assert response.status_code == 400, response.json()
            latency = get_server().status()["models"]["m"]["versions"]["1"]["latency_ms"]
            assert (latency["count"], latency["errors"]) == (0, 2)
        finally:
            reset_server()


@pytest.mark.parametrize("refused_leads", [True, False])
def test_identical_requests_sharing_a_run_get_and_record_each_their_own_outcome(
    repository: Path, make_server: ServerFactory, hold_session: SessionHolder, refused_leads: bool
) -> None:
    # The same inputs in flight twice share one run (the cache is on): a /v2 request for z, which version 1
    # (that answers) lacks, and a predict that names no output. Whichever leads the run, the predict gets the
    # version's answer and the /v2 request its 400, each recorded once as what its caller got.
    server, endpoints = canary_with_cache(repository, make_server)
    inputs = {"x": np.array([[HELD_MARK, 1, 2, 3]], dtype=np.float32)}  # (the run of these is held)
    x = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": inputs["x"].ravel().tolist()}
    body = json.dumps({"inputs": [x], "outputs": [{"name": "z"}]}).encode()
    held = hold_session.mark({"x": inputs["x"].copy()})

    def version_1() -> Any:
        return server.status()["models"]["m"]["versions"]["1"]

    with ThreadPoolExecutor(2) as pool:
        first, second = (
            (lambda: call(endpoints, "POST", "/v2/models/m/infer", body), lambda: server.predict("m", inputs))
            if refused_leads
            else (lambda: server.predict("m", inputs), lambda: call(endpoints, "POST", "/v2/models/m/infer", body))
        )
        leading = pool.submit(first)
        assert held.started.wait(10)
        following = pool.submit(second)
        wait_until(lambda: version_1()["cache"]["shared"] == 1)
        held.let_go()
        refused, answered = (leading, following) if refused_leads else (following, leading)
        status, document, _ = refused.result(timeout=10)
        assert status == 400 and "version 1, which answered this request" in document["error"]
        np.testing.assert_array_equal(answered.result(timeout=10)["y"], inputs["x"] * 2)
    latency, cache = version_1()["latency_ms"], version_1()["cache"]
    assert (latency["count"], latency["errors"]) == (1, 1)
    assert (cache["entries"], cache["misses"], cache["shared"]) == (1, 1, 1)


def test_a_checked_request_interrupted_in_its_check_frees_the_requests_that_follow_it(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    # The check of a /v2 answer runs on the caller's thread after its run: a signal handler raising there (a
    # task's time limit, Ctrl-C) went on up before the request was recorded, and identical requests that
    # followed it waited for good.
    server = make_server(busy_repository, config=inprocserve.ModelConfig(cache=inprocserve.CacheConfig(enabled=True)))
    blocker = hold_session(server, rows=1)
    inputs = busy_inputs(1, seed=31)

    def interrupted(outputs: Any, version: int, answering: Any) -> None:
        raise KeyboardInterrupt

    def checked() -> BaseException | None:
        try:
            server._predict_checked("busy", inputs, version=None, context=None, timeout_s=None, check=interrupted)
        except BaseException as exc:
            return exc
        return None

    with ThreadPoolExecutor(1) as pool:
        leader = pool.submit(checked)  # queued behind the blocker: the full way
        wait_until(lambda: server.status()["models"]["busy"]["versions"]["1"]["queued_rows"] == 1)
        follower = server.submit("busy", inputs)
        blocker.release()
        assert isinstance(leader.result(timeout=10), KeyboardInterrupt)
        assert follower.result(timeout=10)["y"].shape == (1, 512)


def _nothing_to_send_model(kind: str) -> object:
    """A model whose only output the protocol cannot send: ``y = float8(x)``, or a ZipMap's sequence of maps."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    if kind == "float8":
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT8E4M3FN, ["batch", 2])
        node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E4M3FN)
        graph = helper.make_graph([node], "float8_only", [x], [y])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    float_map = helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    y = helper.make_value_info("y", helper.make_sequence_type_proto(float_map))
    node = helper.make_node("ZipMap", ["x"], ["y"], domain="ai.onnx.ml", classlabels_int64s=[0, 1])
    graph = helper.make_graph([node], "zipmap_only", [x], [y])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


@pytest.mark.parametrize("kind", ["float8", "zipmap"])
def test_an_answer_with_nothing_to_send_to_a_request_naming_no_outputs_is_recorded_as_refused(
    otel: Otel, repository: Path, kind: str
) -> None:
    # Under a canary, a request that names no outputs, answered by the stable version whose only output is a
    # float8 tensor or a ZipMap, got a 400 ("has no tensor outputs") from the response encoder after its run,
    # while status(), its span and the request metrics counted it as answered: only requests naming outputs had
    # their answer checked before it was recorded.
    from inprocserve_flask import Inprocserve

    model = f"nothing_{kind}"  # (the metrics are the process's: a name no other test's requests record under)
    save_model(_nothing_to_send_model(kind), repository, model, 1)
    save_model(build_scale_model(2.0, features=2), repository, model, 2)
    app = canary_v2_app(repository)
    try:
        x = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.5, -2.0]}
        for _ in range(2):  # the first request adopts the runners (predict's full way), the second runs at once
            response = app.test_client().post(f"/v2/models/{model}/infer", json={"inputs": [x]})
            assert response.status_code == 400, response.json
            assert "has no tensor outputs" in response.json["error"], response.json
        server = app.extensions["inprocserve"].server
        latency = server.status()["models"][model]["versions"]["1"]["latency_ms"]
        assert (latency["count"], latency["errors"]) == (0, 2)
        assert _outcomes(otel, model) == {("client_error", "InvalidInputError"): 2}
    finally:
        Inprocserve.close(app)


def test_a_float8_output_is_not_sent_as_uint8_when_its_version_is_unloaded_during_the_run(
    repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    # Which outputs were float8 was looked up by the answering version after the run: unloaded (a hot reload, an
    # unload by hand) while the request ran, the version was no longer found, and y went out as UINT8 bits
    save_model(_float8_model(), repository, "f8", 1)
    server = make_server(repository)
    endpoints = v2.Endpoints(lambda: server)
    inputs = {"x": np.array([[HELD_MARK, -2.0]], dtype=np.float32)}
    held = hold_session.mark(inputs)
    x = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": inputs["x"].ravel().tolist()}
    with ThreadPoolExecutor(2) as pool:
        answered = pool.submit(call, endpoints, "POST", "/v2/models/f8/infer", json.dumps({"inputs": [x]}).encode())
        assert held.started.wait(10)
        unloaded = pool.submit(server.unload, "f8")  # (it takes the version out of the routes, then drains it)
        wait_until(lambda: server._registry.routes.get("f8") is None)
        held.let_go()
        status, document, _ = answered.result(timeout=10)
        unloaded.result(timeout=10)
    assert status == 200, document
    assert [(o["name"], o["datatype"]) for o in document["outputs"]] == [("z", "FP32")]
