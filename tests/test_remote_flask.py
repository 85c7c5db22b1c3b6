"""The remote backend against the Flask plug-in's Open Inference Protocol endpoints in a second process
(werkzeug on 127.0.0.1): metadata, inference equal to onnxruntime's, typed errors, deadlines, the circuit
breaker against a server that dies and comes back, trace context, and forks."""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
from opentelemetry.sdk.trace import TracerProvider

import inprocserve
from inprocserve._remote import RemoteBackend
from inprocserve._remote_model import RemoteModel
from inprocserve.testing import ManualClock, build_gather_model, build_mlp_model, build_scale_model, save_model

from .conftest import ServerFactory, run_in_forked_child
from .ports import reserved_port
from .toolkit_models import build_string_label_classifier

APP = Path(__file__).with_name("remote_app.py")


class RemoteApp:
    """The protocol app in a child process; always stopped by the fixture that starts it."""

    def __init__(self, repository: Path, port: int = 0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(APP), str(repository), str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(APP.parent), *sys.path])},
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 60)
        line = self.process.stdout.readline().decode() if ready else ""
        if not line.startswith("PORT "):
            self.stop()
            raise AssertionError(f"the protocol app did not start (said {line!r})")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def recorded(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/test/recorded", timeout=10) as response:
            seen: list[dict[str, Any]] = json.loads(response.read())
        return seen

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture(scope="module")
def remote_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("remote") / "models"
    save_model(build_scale_model(2.0), folder, "scale", 1)
    save_model(build_scale_model(3.0), folder, "scale", 2)
    save_model(build_mlp_model((16, 32, 3), seed=7), folder, "mlp", 1)
    save_model(build_gather_model(table_rows=10), folder, "gather", 1)
    save_model(build_string_label_classifier(), folder, "classifier", 1)
    return folder


@pytest.fixture(scope="module")
def app(remote_repository: Path) -> Iterator[RemoteApp]:
    started = RemoteApp(remote_repository)
    yield started
    started.stop()


@pytest.fixture
def backends() -> Iterator[list[RemoteBackend]]:
    made: list[RemoteBackend] = []
    yield made
    for backend in made:
        backend.close()


def make(backends: list[RemoteBackend], url: str, model: str, version: int = 1, **options: Any) -> RemoteBackend:
    clock = options.pop("clock", time.monotonic)
    remote = RemoteModel(url=url, model=model, version=str(version), **options)
    backend = RemoteBackend(model, version, remote, clock=clock)
    backends.append(backend)
    return backend


def direct(repository: Path, model: str, version: int, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(repository / model / str(version) / "model.onnx"))
    return list(session.run(None, feeds))


def test_metadata_becomes_the_signature(app: RemoteApp, backends: list[RemoteBackend]) -> None:
    signature = make(backends, app.url, "mlp").prepare()
    assert [spec.name for spec in signature.inputs] == ["x"]
    assert signature.inputs[0].dtype == np.float32
    assert signature.inputs[0].shape == (None, 16)  # -1 on the wire: dynamic
    assert signature.output_names == ("y",)
    assert signature.batchable


@pytest.mark.parametrize("binary", [True, False])
def test_inference_equals_onnxruntime(
    app: RemoteApp, remote_repository: Path, backends: list[RemoteBackend], binary: bool
) -> None:
    backend = make(backends, app.url, "mlp", binary_tensors=binary)
    slots = backend.runners()
    assert len(slots) == backend.concurrency == 4
    feeds = {"x": np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)}
    (answer,) = backend.run(slots[0], feeds)
    (expected,) = direct(remote_repository, "mlp", 1, feeds)
    np.testing.assert_allclose(answer, expected, rtol=1e-6)
    assert answer.dtype == np.float32
    assert app.recorded()[-1]["binary"] is binary


def test_binary_tensors_are_used_when_the_server_lists_the_extension(
    app: RemoteApp, backends: list[RemoteBackend]
) -> None:
    backend = make(backends, app.url, "scale", version=2)
    backend.prepare()
    (answer,) = backend.run(backend.runners()[0], {"x": np.ones((2, 4), np.float32)})
    np.testing.assert_array_equal(answer, np.full((2, 4), 3.0, np.float32))
    assert backend.status()["binary_tensors"] is True
    assert app.recorded()[-1]["binary"] is True


def test_values_the_remote_model_refuses_raise_invalid_input(app: RemoteApp, backends: list[RemoteBackend]) -> None:
    backend = make(backends, app.url, "gather")
    slot = backend.runners()[0]
    (rows,) = backend.run(slot, {"index": np.array([1, 2], np.int64)})
    assert rows.shape == (2, 4)
    with pytest.raises(inprocserve.InvalidInputError, match="refused the inputs") as caught:
        backend.run(slot, {"index": np.array([1, 99], np.int64)})  # passes validation, fails in onnxruntime
    assert (caught.value.model, caught.value.version) == ("gather", 1)
    assert backend.status()["circuit"] == "closed"  # a bad request says nothing against the server


def test_a_scikit_learn_classifier_served_by_inprocserve_is_served_remotely_without_its_zipmap(
    app: RemoteApp,
    remote_repository: Path,
    make_server: ServerFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # skl2onnx's classifiers answer their scores as a ZipMap (a list of maps), which an inprocserve server's
    # metadata lists as seq(map(string,tensor(float))): the remote backend refused every such model to load
    # ("needs a name, a datatype among BOOL, ..."), so no scikit-learn classifier could be served remotely.
    local = tmp_path / "models"
    (local / "classifier" / "1").mkdir(parents=True)
    (local / "classifier" / "1" / "remote.toml").write_text(f'url = "{app.url}"\nmodel = "classifier"\n')
    with caplog.at_level(logging.WARNING, logger="inprocserve._remote"):
        server = make_server(local)
    assert "output_probability (seq(map(string,tensor(float))))" in caplog.text
    rows = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    answer = server.predict("classifier", {"X": rows})
    assert list(answer) == ["output_label"]  # the labels; the maps the protocol cannot carry are left out
    (labels, _maps) = direct(remote_repository, "classifier", 1, {"X": rows})
    assert answer["output_label"].tolist() == labels.tolist()


def test_an_unknown_remote_model_fails_to_load(app: RemoteApp, backends: list[RemoteBackend]) -> None:
    with pytest.raises(inprocserve.ModelLoadError, match="answered 404"):
        make(backends, app.url, "nosuchmodel").prepare()
    with pytest.raises(inprocserve.ModelLoadError, match="answered 404"):
        make(backends, app.url, "scale", version=7).prepare()


def test_the_deadline_is_sent_and_enforced_locally(app: RemoteApp, backends: list[RemoteBackend]) -> None:
    backend = make(backends, app.url, "scale", headers={"X-Test-Delay-S": "20"}, timeout_s=25)
    backend.prepare()
    started = time.monotonic()
    with pytest.raises(inprocserve.DeadlineExceededError, match=r"the request's 0\.3 s"):
        backend.run(backend.runners()[0], {"x": np.ones((1, 4), np.float32)}, timeout_s=0.3)
    assert time.monotonic() - started < 10  # enforced here: the server holds the request for 20 s
    assert backend.status()["circuit"] == "closed"  # the caller's budget, not the server's fault
    sent = [r for r in app.recorded() if r["path"] == "/v2/models/scale/versions/1/infer"][-1]
    assert 0 < sent["parameters"]["timeout"] <= 300_000  # microseconds, as the protocol's timeout parameter


def test_traceparent_joins_the_remote_spans_to_the_trace(app: RemoteApp, backends: list[RemoteBackend]) -> None:
    backend = make(backends, app.url, "scale")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("batch") as span:
        pass
    backend.run(backend.runners()[0], {"x": np.ones((1, 4), np.float32)}, parent=span)
    traceparent = app.recorded()[-1]["traceparent"]
    context = span.get_span_context()
    assert traceparent == f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def test_a_dead_server_fails_fast_opens_the_circuit_and_recovers(
    remote_repository: Path, backends: list[RemoteBackend]
) -> None:
    clock = ManualClock()
    port = reserved_port()  # (held: the app starts on it again below, and no other process takes it meanwhile)
    server = RemoteApp(remote_repository, port)
    try:
        backend = make(backends, server.url, "scale", failure_threshold=2, cooloff_s=30, retries=1, clock=clock)
        slot = backend.runners()[0]
        feeds = {"x": np.ones((1, 4), np.float32)}
        backend.run(slot, feeds)
    finally:
        server.stop()
    for _ in range(2):  # refused (retried once: it cannot have run), then a typed error
        with pytest.raises(inprocserve.RemoteUnavailableError, match="cannot connect"):
            backend.run(slot, feeds)
    assert backend.status()["retries"] == 2
    assert backend.health() is not None and "failing" in backend.health()  # type: ignore[operator]
    assert backend.status()["circuit"] == "open"
    with pytest.raises(inprocserve.RemoteUnavailableError, match="failing fast"):
        backend.run(slot, feeds)
    server = RemoteApp(remote_repository, port)
    try:
        with pytest.raises(inprocserve.RemoteUnavailableError, match="failing fast"):
            backend.run(slot, feeds)  # still cooling off: not even tried
        clock.advance(30)
        assert backend.status()["circuit"] == "half_open"
        (answer,) = backend.run(slot, feeds)  # the probe
        np.testing.assert_array_equal(answer, feeds["x"] * 2)
        assert backend.status()["circuit"] == "closed"
        assert backend.health() is None
    finally:
        server.stop()


def test_status_names_the_endpoint_and_hides_header_values(app: RemoteApp, backends: list[RemoteBackend]) -> None:
    backend = make(backends, app.url, "scale", headers={"Authorization": "Bearer s3cret"})
    backend.run(backend.runners()[0], {"x": np.ones((1, 4), np.float32)})
    status = backend.status()
    assert status["remote"]["endpoint"] == f"{app.url}/v2/models/scale/versions/1"
    assert status["remote"]["headers"] == {"Authorization": "***"}
    assert status["calls"] == 1 and status["failures"] == 0
    assert "s3cret" not in json.dumps(status, default=str) + repr(backend.remote)
    assert backend.providers == [f"remote:{app.url}/v2/models/scale/versions/1"]


def test_close_is_idempotent_and_refuses_later_runs(app: RemoteApp, backends: list[RemoteBackend]) -> None:
    backend = make(backends, app.url, "scale")
    slot = backend.runners()[0]
    backend.close()
    backend.close()
    with pytest.raises(inprocserve.ServerClosedError):
        backend.run(slot, {"x": np.ones((1, 4), np.float32)})
    assert backend.health() == "closed"


def test_a_forked_child_opens_its_own_connections(app: RemoteApp, backends: list[RemoteBackend]) -> None:
    backend = make(backends, app.url, "scale")
    slot = backend.runners()[0]
    feeds = {"x": np.ones((1, 4), np.float32)}
    backend.run(slot, feeds)  # the parent now holds a pooled keep-alive connection

    def in_the_child() -> str:
        (answer,) = backend.run(backend.runners()[0], feeds)
        return str(float(answer[0, 0]))

    assert run_in_forked_child(in_the_child) == "2.0"
    (answer,) = backend.run(slot, feeds)  # the parent's connection still works
    assert float(answer[0, 0]) == 2.0


def test_a_dead_server_is_logged_when_its_circuit_opens_and_when_it_answers_again_not_per_call(
    remote_repository: Path, repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    port = reserved_port()  # (held: the app starts on it again below, and no other process takes it meanwhile)
    app = RemoteApp(remote_repository, port)
    (repository / "scale" / "1").mkdir(parents=True)
    (repository / "scale" / "1" / "remote.toml").write_text(
        f'url = "{app.url}"\nmodel = "scale"\nfailure_threshold = 2\ncooloff_s = 5.0\nretries = 0\n'
    )
    try:
        server = make_server(repository, clock=clock)
        x = np.ones((1, 4), np.float32)
        server.predict("scale", x)
    finally:
        app.stop()
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        for _ in range(10):  # 50 s of a dead server: every call fails, a failed probe every 5 s
            for _ in range(20):
                with pytest.raises(inprocserve.RemoteUnavailableError):
                    server.predict("scale", x)
            clock.advance(5)
        opened = [r for r in caplog.records if "failed 2 calls in a row" in r.getMessage()]
        assert len(opened) == 1 and opened[0].levelno == logging.WARNING
        assert "Connection refused" in opened[0].getMessage()
        clock.advance(60)  # a minute on: said again, with how often it opened since
        with pytest.raises(inprocserve.RemoteUnavailableError):
            server.predict("scale", x)
        again = [r for r in caplog.records if "more times since the last such line" in r.getMessage()]
        assert len(again) == 1
        app = RemoteApp(remote_repository, port)
        try:
            clock.advance(5)
            for _ in range(20):
                server.predict("scale", x)
        finally:
            app.stop()
    assert len([r for r in caplog.records if "answers again" in r.getMessage()]) == 1
    assert len([r for r in caplog.records if r.name == "inprocserve._remote"]) == 3


def test_a_server_that_comes_and_goes_is_logged_once_a_minute_not_at_each_open_and_close(
    remote_repository: Path, repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # A server up for one probe and down for the next calls: each close forgot the opening, so each flap (every
    # cooloff_s) logged the warning and the "answers again" line.
    clock = ManualClock()
    port = reserved_port()  # (held: the app starts on it again below, and no other process takes it meanwhile)
    app = RemoteApp(remote_repository, port)
    (repository / "scale" / "1").mkdir(parents=True)
    (repository / "scale" / "1" / "remote.toml").write_text(
        f'url = "{app.url}"\nmodel = "scale"\nfailure_threshold = 2\ncooloff_s = 5.0\nretries = 0\n'
    )
    x = np.ones((1, 4), np.float32)
    try:
        server = make_server(repository, clock=clock)
        server.predict("scale", x)
    finally:
        app.stop()
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        for _ in range(5):  # 25 s of flaps
            for _ in range(3):  # down: the circuit opens
                with pytest.raises(inprocserve.RemoteUnavailableError):
                    server.predict("scale", x)
            clock.advance(5)
            app = RemoteApp(remote_repository, port)
            try:
                server.predict("scale", x)  # up for the probe: it closes
            finally:
                app.stop()
    assert len([r for r in caplog.records if "failed 2 calls in a row" in r.getMessage()]) == 1
    assert len([r for r in caplog.records if "answers again" in r.getMessage()]) == 1
