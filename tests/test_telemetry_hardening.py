"""Telemetry after a review: a request is recorded with what its caller got, a failing metric pipeline never
costs an answer, refusals of names no model has stay one series, early /v2 refusals are recorded, span
attributes from callers are bounded, and a refusal's exemplar points at its own span."""

from __future__ import annotations

import asyncio
import io
import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.trace import SpanKind

import inprocserve
from inprocserve.testing import build_scale_model, save_model
from inprocserve.v2 import Endpoints

from .conftest import HeldSession, ServerFactory, build_busy_model, busy_inputs, run_python, wait_until
from .test_telemetry import Otel, _outcomes
from .test_telemetry import otel as otel  # the fixture: one SDK per process

X = np.ones((1, 4), np.float32)


def outcomes_since(
    otel: Otel, model: str, before: dict[tuple[str, str | None], int]
) -> dict[tuple[str, str | None], int]:
    """The model's request counts by outcome recorded since ``before`` (the process has one SDK, whose
    counts are cumulative over the tests before this one)."""
    now = _outcomes(otel, model)
    return {key: count - before.get(key, 0) for key, count in now.items() if count != before.get(key, 0)}


def test_a_task_answered_by_its_own_deadline_is_recorded_as_a_deadline(
    otel: Otel, repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    # Tasks with deadlines are merged; the merged request waits for the latest of them, so the short one's
    # own timer answers it while the run still succeeds for the others.
    save_model(build_busy_model(512), repository, "busy", 1)
    before = _outcomes(otel, "busy")
    server = make_server(repository)
    server.predict("busy", busy_inputs(1))
    blocker = hold_session(server, "busy", rows=3000)  # held until the short deadline answered, however fast the host

    async def call(timeout_s: float) -> str:
        try:
            await server.apredict("busy", busy_inputs(1), timeout_s=timeout_s)
        except inprocserve.DeadlineExceededError:
            return "deadline"
        return "ok"

    async def main() -> list[str]:
        calls = [asyncio.ensure_future(call(timeout_s)) for timeout_s in (30, 0.02, 30)]
        await asyncio.wait([calls[1]])
        blocker.release()
        return await asyncio.gather(*calls)

    assert asyncio.run(main()) == ["ok", "deadline", "ok"]
    assert outcomes_since(otel, "busy", before) == {
        ("deadline_exceeded", "DeadlineExceededError"): 1,
        ("ok", None): 4,  # the first call, the blocker and the two answered tasks
    }
    spans = [dict(span.attributes or {}) for span in otel.finished("inprocserve.predict")]
    assert sorted(span["inprocserve.outcome"] for span in spans if span["inprocserve.model.name"] == "busy") == [
        "deadline_exceeded",
        "ok",
        "ok",
        "ok",
        "ok",
    ]


def test_a_full_way_task_cancelled_during_its_run_is_recorded_as_cancelled(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    # Sharing identical requests sends apredict the full way (a queued request whose future _deliver
    # resolves). The task is cancelled while its run goes on: the run succeeds, the caller got a
    # cancellation, and the request is a client_error, not ok.
    save_model(build_busy_model(512), repository, "busy", 1)
    before = _outcomes(otel, "busy")
    sharing = inprocserve.ModelConfig(
        cache=inprocserve.CacheConfig(share_in_flight=True), batching=inprocserve.BatchingConfig(max_batch_size=4096)
    )
    server = make_server(repository, models={"busy": sharing})
    server.predict("busy", busy_inputs(1))

    async def main() -> None:
        await asyncio.wait_for(server.apredict("busy", busy_inputs(2000)), 0.02)  # a run of ~0.1 s or more

    with pytest.raises(TimeoutError):
        asyncio.run(main())
    wait_until(lambda: sum(outcomes_since(otel, "busy", before).values()) >= 2)  # (recorded when the run ends)
    assert outcomes_since(otel, "busy", before) == {("client_error", "CancelledError"): 1, ("ok", None): 1}


def test_refusals_of_names_no_model_has_are_one_series(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    unknown_before, scale_before = _outcomes(otel, "_unknown"), _outcomes(otel, "scale")
    server = make_server(repository)
    server.predict("scale", X)
    for i in range(3):
        with pytest.raises(TypeError):  # a version of the wrong type, to a name nobody serves
            server.predict(f"typo-{i}", X, version="1")  # type: ignore[arg-type]
    server.close()
    for i in range(3):
        with pytest.raises(inprocserve.ServerClosedError):
            server.predict(f"after-close-{i}", X)
    with pytest.raises(inprocserve.ServerClosedError):
        server.predict("scale", X)  # a name it served keeps its series after close
    names = {point.attributes["inprocserve.model.name"] for point in otel.metric_points("inprocserve.request.duration")}
    assert not any(name.startswith(("typo-", "after-close-")) for name in names)
    assert outcomes_since(otel, "_unknown", unknown_before) == {
        ("client_error", "TypeError"): 3,
        ("unavailable", "ServerClosedError"): 3,
    }
    assert outcomes_since(otel, "scale", scale_before) == {("ok", None): 1, ("unavailable", "ServerClosedError"): 1}


def test_v2_refusals_made_before_predict_are_recorded(otel: Otel, repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    before = _outcomes(otel, "scale")
    misses_before = _deadline_misses(otel, "scale")
    server = make_server(repository)
    endpoints = Endpoints(lambda: server)
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}

    def infer(path: str, budget_s: float | None) -> int:
        stream = io.BytesIO(body.encode())
        return endpoints.handle("POST", path, headers, stream.read, budget_s=lambda: budget_s).status

    assert infer("/v2/models/scale/infer", None) == 200
    assert infer("/v2/models/scale/infer", 0.0) == 504  # the request's time budget was spent already
    assert infer("/v2/models/scale/versions/abc/infer", None) == 400
    assert outcomes_since(otel, "scale", before) == {
        ("ok", None): 1,
        ("deadline_exceeded", "DeadlineExceededError"): 1,
        ("client_error", "InvalidInputError"): 1,
    }
    assert _deadline_misses(otel, "scale") - misses_before == 1


def _deadline_misses(otel: Otel, model: str) -> int:
    points = otel.metric_points("inprocserve.requests.deadline_exceeded")
    return sum(p.value for p in points if p.attributes["inprocserve.model.name"] == model)


def test_a_caller_supplied_model_name_on_a_span_is_cut(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    with pytest.raises(inprocserve.ModelNotFoundError):
        server.predict("x" * 100_000, X)
    (span,) = otel.finished("inprocserve.predict")
    assert len(span.attributes["inprocserve.model.name"]) <= 256
    (event,) = [event for event in span.events if event.name == "exception"]
    assert len(event.attributes["exception.message"]) <= 256


def test_a_refused_request_s_exemplar_points_at_its_own_span(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    seen = {e.span_id for p in otel.metric_points("inprocserve.request.duration") for e in p.exemplars}
    with otel.tracer.start_as_current_span("POST /score", kind=SpanKind.SERVER) as web:
        with pytest.raises(inprocserve.InvalidInputError):
            server.predict("scale", np.ones((1, 3), np.float32))
    (predict,) = otel.finished("inprocserve.predict")
    exemplars = [
        e.span_id
        for p in otel.metric_points("inprocserve.request.duration")
        for e in p.exemplars
        if e.span_id not in seen
    ]
    assert exemplars == [predict.context.span_id]
    assert predict.context.span_id != web.get_span_context().span_id


_BROKEN_VIEW = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import AlwaysOnExemplarFilter, MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.metrics.view import View
    from opentelemetry.sdk.metrics._internal.exemplar import ExemplarReservoir

    class Broken(ExemplarReservoir):  # an application's View with a bug: every record raises
        def __init__(self, **kwargs): pass
        def offer(self, *args, **kwargs): raise RuntimeError("broken exemplar reservoir")
        def collect(self, *args, **kwargs): return []

    view = View(instrument_name="inprocserve.*", exemplar_reservoir_factory=lambda aggregation: Broken)
    metrics.set_meter_provider(
        MeterProvider(metric_readers=[InMemoryMetricReader()], exemplar_filter=AlwaysOnExemplarFilter(), views=[view])
    )
    import logging
    logging.basicConfig(level=logging.WARNING)
    import inprocserve

    x = np.ones((1, 4), np.float32)
    with inprocserve.Server(Path(sys.argv[1])) as server:
        print("lone", float(server.predict("scale", x)["y"][0, 0]))
        print("queued", float(server.submit("scale", x).result(10)["y"][0, 0]))
        for name, inputs in (("scale", np.ones((1, 3), np.float32)), ("nope", x)):
            try:
                server.predict(name, inputs)
            except inprocserve.InprocserveError as exc:
                print("refused", type(exc).__name__)
        futures = [server.submit("scale", x) for _ in range(200)]  # enough records for the recording thread
        print("batched", sum(float(f.result(10)["y"][0, 0]) for f in futures))
    """
)


def test_a_failing_metric_pipeline_never_costs_an_answer(repository: Path) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    result = run_python(_BROKEN_VIEW, str(repository))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:5] == [
        "lone 2.0",
        "queued 2.0",
        "refused InvalidInputError",  # the caller's own error, not the SDK's
        "refused ModelNotFoundError",
        "batched 400.0",
    ]
    assert "recording a metric failed" in result.stderr  # said once, with its traceback
    assert result.stderr.count("recording a metric failed") == 1
