"""Remote versions through the request path: a repository with ``fraud/2/model.onnx`` local and
``fraud/3/remote.toml`` served by the Flask plug-in's ``/v2`` endpoints in a second process, used through
``predict`` / ``submit`` / ``apredict`` unchanged, in rollouts, with deadlines, trace context, a server that
dies and comes back, and readiness."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import inprocserve
from inprocserve import (
    BatchingConfig,
    ModelConfig,
    RemoteModel,
    RolloutConfig,
    ShadowConfig,
    WarmupConfig,
    _telemetry,
    v2,
)
from inprocserve._errors import VersionRetiredError
from inprocserve.testing import ManualClock, build_mlp_model, save_model

from .conftest import ServerFactory, wait_until
from .ports import reserved_port
from .test_remote_flask import RemoteApp
from .test_telemetry import Otel, otel  # noqa: F401 (the fixture: an SDK TracerProvider, set once per process)
from .test_v2_codec import call

FEATURES = 16
QUIET = ModelConfig(warmup=WarmupConfig(enabled=False), batching=BatchingConfig(enabled=False))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the model server holds: fraud version 3."""
    folder = tmp_path_factory.mktemp("served") / "models"
    save_model(build_mlp_model((FEATURES, 32, 3), seed=3), folder, "fraud", 3)
    return folder


@pytest.fixture(scope="module")
def app(served: Path) -> Iterator[RemoteApp]:
    started = RemoteApp(served)
    yield started
    started.stop()


def remote_toml(folder: Path, url: str, **extra: str) -> Path:
    path = folder / "remote.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f'url = "{url}"', 'model = "fraud"', 'version = "3"', *(f"{k} = {v}" for k, v in extra.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def mixed(repository: Path, app: RemoteApp) -> Path:
    """``fraud/2`` local, ``fraud/3`` remote."""
    save_model(build_mlp_model((FEATURES, 32, 3), seed=2), repository, "fraud", 2)
    remote_toml(repository / "fraud" / "3", app.url)
    return repository


def rows(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, FEATURES)).astype(np.float32)


def direct(folder: Path, version: int, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(folder / "fraud" / str(version) / "model.onnx"))
    return np.asarray(session.run(None, {"x": x})[0])


def infer_calls(app: RemoteApp) -> int:
    return sum(1 for seen in app.recorded() if seen["path"] == "/v2/models/fraud/versions/3/infer")


def every_version(**rollout: Any) -> ModelConfig:
    return ModelConfig(version_policy=inprocserve.VersionPolicy.all(), rollout=RolloutConfig(**rollout))


def test_local_and_remote_versions_answer_like_onnxruntime(
    make_server: ServerFactory, mixed: Path, served: Path
) -> None:
    server = make_server(mixed, config=every_version())
    x = rows(5)
    local, remote = server.predict("fraud", {"x": x}, version=2), server.predict("fraud", {"x": x}, version=3)
    np.testing.assert_allclose(local["y"], direct(mixed, 2, x), rtol=1e-6)
    np.testing.assert_allclose(remote["y"], direct(served, 3, x), rtol=1e-6)
    assert server.submit("fraud", {"x": x}, version=3).result(timeout=30).version == 3
    answer = asyncio.run(server.apredict("fraud", {"x": x}, version=3))
    np.testing.assert_allclose(answer["y"], direct(served, 3, x), rtol=1e-6)
    versions = server.status()["models"]["fraud"]["versions"]
    assert (versions["2"]["backend"], versions["3"]["backend"]) == ("onnxruntime", "remote")
    facts = versions["3"]["backend_status"]
    assert facts["remote"]["endpoint"] == f"{server_url(facts)}/v2/models/fraud/versions/3"
    assert facts["circuit"] == "closed"
    assert versions["3"]["signature"]["inputs"][0]["name"] == "x"  # from the remote's metadata
    with pytest.raises(inprocserve.InvalidInputError, match="x"):  # validated locally, as for onnxruntime
        server.predict("fraud", {"x": np.ones((1, FEATURES + 1), np.float32)}, version=3)


def server_url(facts: dict[str, Any]) -> str:
    url: str = facts["remote"]["url"]
    assert url.startswith("http://127.0.0.1:")
    return url


def test_a_bad_remote_toml_is_a_failed_version_that_never_replaces_a_working_one(
    make_server: ServerFactory, repository: Path
) -> None:
    save_model(build_mlp_model((FEATURES, 32, 3), seed=2), repository, "fraud", 2)
    remote_toml(repository / "fraud" / "3", "ftp://127.0.0.1:1")
    server = make_server(repository)
    assert server.models == {"fraud": [2]}
    failed = server.status()["models"]["fraud"]["versions"]["3"]
    assert failed["state"] == "failed"
    assert "remote.toml: key 'url' must start with http://" in failed["error"]
    assert server.predict("fraud", {"x": rows(1)}).version == 2
    with pytest.raises(inprocserve.ModelLoadError, match="key 'url'"):
        server.load("fraud", version=3)


def test_an_unreachable_server_at_load_is_a_typed_load_error(make_server: ServerFactory, repository: Path) -> None:
    save_model(build_mlp_model((FEATURES, 32, 3), seed=2), repository, "fraud", 2)
    server = make_server(repository)
    nowhere = RemoteModel(url="http://127.0.0.1:9", model="fraud", version="3", retries=0, timeout_s=2)
    with pytest.raises(inprocserve.ModelLoadError, match=r"127\.0\.0\.1:9"):
        server.load("fraud", version=3, remote=nowhere)
    assert server.models == {"fraud": [2]}
    assert server.readiness().ready


def test_load_with_remote_serves_the_version(make_server: ServerFactory, repository: Path, app: RemoteApp) -> None:
    save_model(build_mlp_model((FEATURES, 32, 3), seed=2), repository, "fraud", 2)
    server = make_server(repository)
    remote = RemoteModel(url=app.url, model="fraud", version="3", headers={"Authorization": "Bearer s3cret"})
    assert server.load("fraud", version=3, remote=remote) == 3
    assert server.predict("fraud", {"x": rows(2)}, version=3).version == 3
    status = server.status()
    assert "s3cret" not in str(status)
    assert status["models"]["fraud"]["versions"]["3"]["backend_status"]["remote"]["headers"] == {"Authorization": "***"}
    with pytest.raises(ValueError, match="not both"):
        server.load("fraud", path=repository / "fraud" / "2", remote=remote)
    with pytest.raises(TypeError, match="RemoteModel"):
        server.load("fraud", remote={"url": app.url})  # type: ignore[arg-type]


def test_a_canary_on_a_remote_version_is_sticky_per_user(make_server: ServerFactory, mixed: Path) -> None:
    (mixed / "fraud" / "config.toml").write_text(  # as docs/scaling.md shows it
        '[rollout]\nstrategy = "canary"\nstable = 2\nkey_field = "user_id"\n\n'
        "[rollout.canary]\nversion = 3\npercent = 50\n"
    )
    server = make_server(mixed)
    assert server.models == {"fraud": [2, 3]}
    first = {
        user: server.predict("fraud", {"x": rows(1)}, context={"user_id": f"user-{user}"}).version for user in range(40)
    }
    assert set(first.values()) == {2, 3}  # both versions answer
    for user, version in first.items():  # the same user gets the same version every time
        assert server.predict("fraud", {"x": rows(1)}, context={"user_id": f"user-{user}"}).version == version


def test_a_shadow_on_a_remote_that_is_down_never_fails_the_caller(
    make_server: ServerFactory, repository: Path, served: Path
) -> None:
    save_model(build_mlp_model((FEATURES, 32, 3), seed=2), repository, "fraud", 2)
    config = every_version(stable=2, shadow=ShadowConfig(versions=(3,)))
    down = RemoteApp(served)
    # no budget: every copy runs (with one, a copy made while the first remote call is still owed is dropped)
    server = make_server(repository, config=config, shadow_budget=1.0)
    try:
        server.load(
            "fraud",
            version=3,
            remote=RemoteModel(url=down.url, model="fraud", version="3", retries=0, failure_threshold=1),
        )
        assert server.predict("fraud", {"x": rows(1)}).version == 2
        wait_until(lambda: server.status()["models"]["fraud"]["shadow"].get("3", {}).get("runs", 0) >= 1)
    finally:
        down.stop()
    x = rows(3)
    for _ in range(8):  # the shadow's server is gone: the caller still gets version 2's answer
        answer = server.predict("fraud", {"x": x})
        assert answer.version == 2
        np.testing.assert_allclose(answer["y"], direct(repository, 2, x), rtol=1e-6)
    wait_until(lambda: server.status()["models"]["fraud"]["shadow"]["3"]["errors"] >= 1)
    readiness = server.readiness()
    assert readiness.ready  # the default version answers; the shadow's server being down shows as degraded
    wait_until(lambda: "fraud" in server.readiness().degraded)


def test_a_slow_shadow_does_not_hold_the_caller(make_server: ServerFactory, repository: Path, app: RemoteApp) -> None:
    save_model(build_mlp_model((FEATURES, 32, 3), seed=2), repository, "fraud", 2)
    config = every_version(stable=2, shadow=ShadowConfig(versions=(3,)))
    # no CPU budget: under one, a shadow run is stopped once it has taken what is left (20 ms by default)
    server = make_server(repository, config=config, shadow_budget=1.0)
    slow = RemoteModel(url=app.url, model="fraud", version="3", headers={"X-Test-Delay-S": "4"}, timeout_s=20)
    server.load(
        "fraud",
        version=3,
        remote=slow,
        config=dataclasses.replace(config, warmup=QUIET.warmup, batching=QUIET.batching),
    )
    before = infer_calls(app)
    assert server.predict("fraud", {"x": rows(1)}).version == 2
    # The caller has its answer while the remote still holds the shadow's call (4 s): no shadow run has
    # finished yet, though the call has reached the server (or is queued for it).
    assert server.status()["models"]["fraud"]["shadow"].get("3", {}).get("runs", 0) == 0
    wait_until(lambda: infer_calls(app) > before)
    wait_until(lambda: server.status()["models"]["fraud"]["shadow"].get("3", {}).get("runs", 0) >= 1, timeout_s=20)


def test_concurrent_requests_are_coalesced_into_batched_remote_calls(
    make_server: ServerFactory, mixed: Path, served: Path, app: RemoteApp
) -> None:
    server = make_server(mixed, config=every_version())
    before = infer_calls(app)
    inputs = [rows(1, seed=i) for i in range(64)]
    futures = [server.submit("fraud", {"x": x}, version=3) for x in inputs]
    answers = [future.result(timeout=60) for future in futures]
    calls = infer_calls(app) - before
    assert 1 <= calls < len(inputs)  # fewer remote calls than requests: batches
    expected = direct(served, 3, np.concatenate(inputs))
    for row, answer in enumerate(answers):
        np.testing.assert_allclose(answer["y"][0], expected[row], rtol=1e-5, atol=1e-6)
    assert server.status()["models"]["fraud"]["versions"]["3"]["rows_run"] >= len(inputs)


def test_the_callers_deadline_reaches_the_remote_and_is_enforced(
    make_server: ServerFactory, repository: Path, app: RemoteApp
) -> None:
    save_model(build_mlp_model((FEATURES, 32, 3), seed=2), repository, "fraud", 2)
    server = make_server(repository)
    slow = RemoteModel(url=app.url, model="fraud", version="3", headers={"X-Test-Delay-S": "20"}, timeout_s=25)
    server.load("fraud", version=3, remote=slow, config=QUIET)
    started = time.monotonic()
    with pytest.raises(inprocserve.DeadlineExceededError):
        server.predict("fraud", {"x": rows(1)}, version=3, timeout_s=0.5)
    assert time.monotonic() - started < 15  # enforced here: the server holds the call for 20 s
    sent = [seen for seen in app.recorded() if seen["path"] == "/v2/models/fraud/versions/3/infer"][-1]
    assert 0 < sent["parameters"]["timeout"] <= 500_000  # microseconds left of the caller's deadline
    assert server.status()["models"]["fraud"]["versions"]["3"]["backend_status"]["circuit"] == "closed"


def test_a_remote_that_dies_fails_fast_shows_in_readiness_and_recovers(
    make_server: ServerFactory, repository: Path, served: Path
) -> None:
    save_model(build_mlp_model((FEATURES, 32, 3), seed=2), repository, "fraud", 2)
    server = make_server(repository)
    port = reserved_port()  # (held: the app starts on it again below, and no other process takes it meanwhile)
    remote_app = RemoteApp(served, port)
    try:
        remote = RemoteModel(
            url=remote_app.url, model="fraud", version="3", retries=0, failure_threshold=2, cooloff_s=1.0
        )
        server.load("fraud", version=3, remote=remote)  # the newest: the default version
        assert server.predict("fraud", {"x": rows(1)}).version == 3
    finally:
        remote_app.stop()
    for _ in range(2):
        with pytest.raises(inprocserve.RemoteUnavailableError, match="unavailable"):
            server.predict("fraud", {"x": rows(1)})
    with pytest.raises(inprocserve.RemoteUnavailableError, match="failing fast"):
        server.predict("fraud", {"x": rows(1)})
    readiness = server.readiness()
    assert not readiness.ready
    assert "version 3" in readiness.reasons["fraud"] and "is failing" in readiness.reasons["fraud"]
    assert server.status()["models"]["fraud"]["versions"]["3"]["backend_status"]["circuit"] == "open"
    endpoints = v2.Endpoints(lambda: server)
    status, document, _ = call(endpoints, "GET", "/v2/health/ready")
    assert status == 503 and "version 3" in document["error"]
    status, document, _ = call(endpoints, "GET", "/v2/models/fraud/versions/3/ready")
    assert status == 503 and "is failing" in document["error"]
    assert call(endpoints, "GET", "/v2/models/fraud/versions/2/ready")[0] == 200
    assert server.predict("fraud", {"x": rows(1)}, version=2).version == 2  # the local version still answers
    remote_app = RemoteApp(served, port)
    try:

        def recovered() -> bool:
            try:
                return server.predict("fraud", {"x": rows(1)}).version == 3
            except inprocserve.RemoteUnavailableError:
                return False

        wait_until(recovered, timeout_s=15)
        assert server.readiness().ready
    finally:
        remote_app.stop()


def test_the_traceparent_of_a_predict_reaches_the_remote(
    otel: Otel,  # noqa: F811
    make_server: ServerFactory,
    mixed: Path,
    app: RemoteApp,
) -> None:
    server = make_server(mixed, config=every_version())
    with otel.tracer.start_as_current_span("handler") as handler:
        server.predict("fraud", {"x": rows(1)}, version=3)
    sent = [seen for seen in app.recorded() if seen["path"] == "/v2/models/fraud/versions/3/infer"][-1]
    assert sent["traceparent"] is not None
    _, trace_id, span_id, _ = sent["traceparent"].split("-")
    assert int(trace_id, 16) == handler.get_span_context().trace_id  # the remote's spans join this trace
    ours = {span.context.span_id for span in otel.spans.get_finished_spans() if span.context is not None}
    assert int(span_id, 16) in ours  # the parent is a span this process recorded (the request's or batch's)


def test_only_a_version_that_computes_here_leaves_its_dropped_root_spans_unmade(
    make_server: ServerFactory, mixed: Path, app: RemoteApp
) -> None:
    """A remote version's request span, sampled or not, is sent on as its run's ``traceparent`` (a dropped
    one says "not sampled", so the remote server does not sample on its own); a local version's is never
    sent anywhere, so a dropped one is not made (``Recorder.local``, see ``start_request_span``)."""
    server = make_server(mixed, config=every_version())
    versions = server._registry.routes["fraud"].versions
    local, remote = versions[2].batcher, versions[3].batcher
    assert local is not None and remote is not None
    assert local.telemetry.local and not remote.telemetry.local


def test_a_request_routed_again_from_a_local_version_to_a_remote_one_sends_its_dropped_trace_on(
    otel: Otel,  # noqa: F811
    make_server: ServerFactory,
    mixed: Path,
    app: RemoteApp,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request routed to a local version leaves a root span the sampler drops unmade. When that version is
    replaced between routing and queueing and the request is routed again, to a remote version, its span is
    asked for anew: the remote server gets a "not sampled" ``traceparent``, not none (it would sample the
    request by its own rule)."""
    dropping = _telemetry._sampling_of(TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0))))
    assert dropping is not None
    monkeypatch.setattr(_telemetry, "_root_sampling", lambda: dropping)  # every root dropped, by the SDK's rule
    server = make_server(mixed, config=every_version())
    server.switch("fraud", 2)
    local = server._registry.routes["fraud"].versions[2].batcher
    assert local is not None and local.telemetry.local
    submit = local.submit

    def replaced_first(request: Any, **kwargs: Any) -> None:
        # (as a hot reload replaces the version between routing and queueing: the next route is version 3)
        monkeypatch.setattr(local, "submit", submit)
        server.switch("fraud", 3)
        raise VersionRetiredError("version 2 was replaced", model="fraud", version=2)

    monkeypatch.setattr(local, "submit", replaced_first)
    answer = server.predict("fraud", {"x": rows(1)})  # (alone: it runs on this thread, its span the run's parent)
    assert answer.version == 3
    sent = [seen for seen in app.recorded() if seen["path"] == "/v2/models/fraud/versions/3/infer"][-1]
    assert sent["traceparent"] is not None, sent
    assert not int(sent["traceparent"].split("-")[3], 16) & 1, sent  # its "sampled" flag is off


def test_a_remote_call_under_an_unsampled_trace_tells_the_remote_so(
    otel: Otel,  # noqa: F811
    make_server: ServerFactory,
    mixed: Path,
    app: RemoteApp,
) -> None:
    """A web request whose incoming trace was not sampled: the library makes no span of its own, and the
    remote server still gets the caller's trace with its "not sampled" flag, instead of no traceparent (it
    would start a trace of its own, sampled by its own rule, for every request the caller chose to drop)."""
    server = make_server(mixed, config=every_version())
    incoming = SpanContext(0x1234, 0xABCD, is_remote=True, trace_flags=TraceFlags(0))
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(incoming)))
    try:
        server.predict("fraud", {"x": rows(1)}, version=3)
    finally:
        otel_context.detach(token)
    sent = [seen for seen in app.recorded() if seen["path"] == "/v2/models/fraud/versions/3/infer"][-1]
    assert sent["traceparent"] == f"00-{0x1234:032x}-{0xABCD:016x}-00"


def test_a_remote_version_whose_server_was_down_at_start_loads_on_a_later_refresh(
    make_server: ServerFactory, repository: Path, served: Path
) -> None:
    save_model(build_mlp_model((FEATURES, 32, 3), seed=2), repository, "fraud", 2)
    port = reserved_port()  # nothing listens there until the app starts on it
    remote_toml(repository / "fraud" / "3", f"http://127.0.0.1:{port}", retries="0")
    server = make_server(repository, config=every_version())
    assert server.models == {"fraud": [2]}
    assert "cannot connect" in server.status()["models"]["fraud"]["versions"]["3"]["error"]
    remote_app = RemoteApp(served, port)
    try:
        server.refresh()  # remote.toml did not change, but its server is back: the version loads
        assert server.models == {"fraud": [2, 3]}
        np.testing.assert_allclose(
            server.predict("fraud", {"x": rows(2)}, version=3)["y"], direct(served, 3, rows(2)), rtol=1e-6
        )
    finally:
        remote_app.stop()


def test_a_bad_remote_toml_waits_for_its_file_to_change(make_server: ServerFactory, repository: Path) -> None:
    save_model(build_mlp_model((FEATURES, 32, 3), seed=2), repository, "fraud", 2)
    remote_toml(repository / "fraud" / "3", "http://127.0.0.1:9", retries="-1")
    server = make_server(repository)
    problems = server.refresh()
    assert not any("'retries'" in problem for problem in problems)  # not tried again: the file is unchanged
    assert "key 'retries' must be an int" in server.status()["models"]["fraud"]["versions"]["3"]["error"]


def test_load_with_a_path_takes_a_remote_toml_or_its_folder(
    make_server: ServerFactory, tmp_path: Path, app: RemoteApp, served: Path
) -> None:
    folder = remote_toml(tmp_path / "elsewhere" / "3", app.url).parent
    server = make_server()
    assert server.load("fraud", path=folder) == 1
    assert server.load("fraud", path=folder / "remote.toml") == 2
    for version in (1, 2):
        answer = server.predict("fraud", {"x": rows(2)}, version=version)
        np.testing.assert_allclose(answer["y"], direct(served, 3, rows(2)), rtol=1e-6)
        assert server.status()["models"]["fraud"]["versions"][str(version)]["backend"] == "remote"


def test_a_repository_remote_version_runs_on_the_servers_clock(
    make_server: ServerFactory, repository: Path, served: Path
) -> None:
    clock = ManualClock()
    port = reserved_port()  # (held: the app starts on it again below, and no other process takes it meanwhile)
    remote_app = RemoteApp(served, port)
    try:
        remote_toml(repository / "fraud" / "3", remote_app.url, retries="0", failure_threshold="1", cooloff_s="60")
        server = make_server(repository, clock=clock)
        assert server.predict("fraud", {"x": rows(1)}).version == 3
    finally:
        remote_app.stop()
    with pytest.raises(inprocserve.RemoteUnavailableError, match="unavailable"):
        server.predict("fraud", {"x": rows(1)})
    facts = server.status()["models"]["fraud"]["versions"]["3"]["backend_status"]
    assert facts["circuit"] == "open"
    remote_app = RemoteApp(served, port)
    try:
        with pytest.raises(inprocserve.RemoteUnavailableError, match="failing fast"):
            server.predict("fraud", {"x": rows(1)})  # the server's clock has not moved: still cooling off
        clock.advance(60)
        assert server.predict("fraud", {"x": rows(1)}).version == 3  # the probe, on the server's clock
        assert server.readiness().ready
    finally:
        remote_app.stop()


@pytest.mark.parametrize("way", ["merged", "full"])
def test_an_event_loop_never_runs_a_remote_request_itself(
    way: str, make_server: ServerFactory, mixed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However short a remote version's measured run, its call waits on the network, where a stalled server
    would stall every task of the loop: a worker makes it, and wakes the loop with the answer."""
    from inprocserve import _loop_batching
    from inprocserve._loop_batching import loop_wakes

    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 10.0)  # any run qualifies by its cost
    server = make_server(mixed, config=every_version())
    server.predict("fraud", {"x": rows(1)}, version=3)  # adopts the runners: the merged way applies
    if way == "full":  # as for a version with a cache or a rollout: queued one by one
        monkeypatch.setattr(server, "_plain_route", lambda *args, **kwargs: None)

    async def main() -> tuple[list[inprocserve.Prediction], int]:
        loop = asyncio.get_running_loop()
        answers = [await server.apredict("fraud", {"x": rows(1, seed=i)}, version=3) for i in range(3)]
        answers += await asyncio.gather(
            *(server.apredict("fraud", {"x": rows(1, seed=i)}, version=3) for i in range(3))
        )
        return answers, loop_wakes(loop)

    answers, wakes = asyncio.run(main())
    assert [answer.version for answer in answers] == [3] * 6
    assert wakes >= 4  # each lone request, then the three together: a worker answered every one


def test_the_status_page_says_why_a_remote_version_cannot_take_work(
    make_server: ServerFactory, repository: Path, served: Path
) -> None:
    # With the remote server down the model is "not ready", but the page showed every version "ready" and
    # nothing of why: the reason readiness gives was not on it.
    save_model(build_mlp_model((FEATURES, 32, 3), seed=2), repository, "fraud", 2)
    server = make_server(repository)
    remote_app = RemoteApp(served)
    try:
        remote = RemoteModel(url=remote_app.url, model="fraud", version="3", retries=0, failure_threshold=2)
        server.load("fraud", version=3, remote=remote)
    finally:
        remote_app.stop()
    for _ in range(2):
        with pytest.raises(inprocserve.RemoteUnavailableError):
            server.predict("fraud", {"x": rows(1)})
    page = inprocserve.render_status_page(server.status(include_paths=False))
    assert "not ready" in page and "cannot take work" in page
    assert "Cannot take work: the remote server http://127.0.0.1:" in page and "is failing (2 calls in a row" in page
