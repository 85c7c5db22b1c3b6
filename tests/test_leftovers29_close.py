"""A load that ``close()`` stops (a version still loading when the server closes) tells its caller what every
other call on a closing server is told: ``ServerClosedError`` (a 503 the client retries), not ``ModelLoadError``
(a 422 or 500 read as a bad file). The load is made long by a checksum over a 16 GiB sparse data file: the
close stops its hashing at the next MiB (no disk is written, and nothing waits on a fixed sleep)."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import inprocserve
from inprocserve import web
from inprocserve._control import ControlFile

from .conftest import ServerFactory
from .test_checksum_external_data import _read_so_far, save_external, sha256sum


def _slow_version(folder: Path) -> Path:
    """``y = x * 2`` in ``folder`` whose checksum file lists a 16 GiB sparse data file: its load hashes for
    seconds (a fake digest: the close stops it long before the end). Returns the data file."""
    save_external(folder, 2.0)
    (folder / "model.onnx.sha256").write_text(sha256sum(folder, "model.onnx") + f"{'0' * 64}  weights.data\n")
    data = folder / "weights.data"
    with data.open("r+b") as file:
        file.truncate(16 << 30)
    return data


def _closed_while_loading(server: inprocserve.Server, data: Path, call: Callable[[], object]) -> BaseException:
    """Run ``call`` on a thread, close the server once it is hashing ``data``, and return what it raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            raised.append(AssertionError(f"it returned {call()!r}"))
        except BaseException as exc:  # (what the test reads)
            raised.append(exc)

    loading = threading.Thread(target=run)
    loading.start()
    _read_so_far(data, lambda position: position >= 8 << 20)  # (hashing it, 8 MiB in)
    server.close()
    loading.join(timeout=60)
    assert not loading.is_alive() and len(raised) == 1
    return raised[0]


@pytest.fixture
def slow_second(repository: Path) -> Path:
    save_external(repository / "m" / "1", 1.0)
    return _slow_version(repository / "m" / "2")


def test_a_load_of_one_version_stopped_by_close_raises_server_closed(
    repository: Path, slow_second: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inprocserve")
    server = make_server(repository, models={"m": inprocserve.ModelConfig(version_policy=_specific(1))})
    assert server.models == {"m": [1]}
    error = _closed_while_loading(server, slow_second, lambda: server.load("m", version=2))
    assert type(error) is inprocserve.ServerClosedError, repr(error)
    assert (str(error), error.model, error.version) == (
        "model 'm' version 2 was not loaded: the server is closing",
        "m",
        2,
    )
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert any("model 'm' version 2 was not loaded, the server closing" in r.getMessage() for r in caplog.records)


def test_a_load_of_every_version_stopped_by_close_raises_server_closed(
    repository: Path, slow_second: Path, make_server: ServerFactory
) -> None:
    first = inprocserve.ModelConfig(version_policy=_specific(1))
    every = inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all())
    server = make_server(repository, config=first)  # (load's config= is laid over it)
    error = _closed_while_loading(server, slow_second, lambda: server.load("m", config=every))
    assert type(error) is inprocserve.ServerClosedError, repr(error)
    assert (str(error), error.model, error.version) == (
        "model 'm' version 2 was not loaded: the server is closing",
        "m",
        2,
    )
    server = make_server(repository, config=first)
    (repository / "m" / "config.toml").write_text('version_policy = "all"\n')  # (read by the load below)
    error = _closed_while_loading(server, slow_second, lambda: server.load("m"))
    assert type(error) is inprocserve.ServerClosedError, repr(error)
    assert (error.model, error.version) == ("m", None)
    assert str(error) == "model 'm' was not loaded: the server is closing"


def test_an_admin_switch_stopped_by_close_is_a_503_not_a_422(
    repository: Path, slow_second: Path, make_server: ServerFactory
) -> None:
    """The plug-ins answer a closing server 503 with Retry-After (the client retries on another worker), and a
    version that cannot load 422 ("model_load_failed": fix the file): a switch whose load the close stopped was
    the 422."""
    server = make_server(repository, models={"m": inprocserve.ModelConfig(version_policy=_specific(1))})
    answer = _closed_while_loading(
        server, slow_second, lambda: web.admin_answer(server, "switch", "m", {"version": 2}, actor="alice")
    )
    assert isinstance(answer, AssertionError)  # (an answer, not an exception)
    assert "AdminAnswer(status=503" in str(answer), answer
    assert "'error': 'unavailable'" in str(answer) and "Retry-After" in str(answer), answer


def _failed(server: inprocserve.Server) -> dict[str, object]:
    """The versions ``status()`` shows as failed loads, with their errors."""
    models = server.status()["models"]
    return {
        f"{name}/{number}": entry["error"]
        for name, model in models.items()
        for number, entry in model["versions"].items()
        if entry["state"] == "failed"
    }


def _specific(*versions: int) -> inprocserve.VersionPolicy:
    return inprocserve.VersionPolicy.specific(*versions)


def test_a_control_revision_whose_load_close_stops_logs_no_error(
    repository: Path, slow_second: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The control-file watcher follows a switch written by another process by loading the version: a close that
    stops that load is the process exiting, not a bad file (the status of the closed server showed the version
    failed), nor a revision this worker failed to apply (logged at ERROR)."""
    caplog.set_level(logging.INFO, logger="inprocserve")
    server = make_server(
        repository, models={"m": inprocserve.ModelConfig(version_policy=_specific(1))}, control_interval_s=0.05
    )
    # (what `python -m inprocserve switch` writes, without its load of the version here: 20 s of hashing)
    ControlFile(repository).set_model("m", lambda state: dataclasses.replace(state, stable=2), actor="deploy")
    _read_so_far(slow_second, lambda position: position >= 8 << 20)  # (the watcher loads it, hashing 8 MiB in)
    server.close()
    assert _failed(server) == {}  # (it was shown failed, "the server was closed while ... was being hashed")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert any("model 'm' version 2 was not loaded, the server closing" in r.getMessage() for r in caplog.records)
