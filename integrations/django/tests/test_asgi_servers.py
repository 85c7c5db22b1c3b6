"""Django async views under real daphne, hypercorn and granian (ASGI), as docs/django.md says they are served:
concurrent HTTP requests share runs on the worker's event loop, a lone request is answered without suspending
its task, a bad body is a 400 and serving goes on, and each server stops promptly on the signals it documents.

Which loop each runs: daphne, twisted's asyncio reactor on a loop of asyncio's own; hypercorn, asyncio's
(``-k asyncio``, its default) or uvloop's (``-k uvloop``); granian, the one ``--loop`` names (``auto``, its
default, takes rloop, then uvloop, then asyncio's). uvicorn and ``gunicorn -k asgi`` have their own tests
(test_asgi_uvicorn.py, tests/test_gunicorn_asgi.py)."""

from __future__ import annotations

import http.client
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asgi_serving import Served, bursts_until_shared, scale_version, serve

from inprocserve.testing import build_mlp_model, save_model

CLIENTS = 32
REQUESTS = 192
STOP_BOUND_S = 10.0  # each stopped in 0.1-0.9 s here (2 cores, under load): a server that hangs is far past it
LOOPS = {"asyncio": "asyncio.unix_events._UnixSelectorEventLoop", "uvloop": "uvloop.Loop"}

SERVED = [
    ("daphne", "asyncio"),  # (twisted's asyncio reactor: daphne offers no other loop)
    ("hypercorn", "asyncio"),
    ("hypercorn", "uvloop"),
    ("granian", "asyncio"),
    ("granian", "uvloop"),
]


def _needs(server: str, loop: str) -> None:
    pytest.importorskip(server, reason=f"{server} is not installed (it is in the dev extra)")
    if loop == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed (it is in the dev extra)")


@pytest.fixture(scope="module", params=SERVED, ids=[f"{server}-{loop}" for server, loop in SERVED])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server of each kind and loop for the module, serving the test project on a loopback port."""
    server, loop = request.param
    _needs(server, loop)
    running = serve(server, tmp_path_factory.mktemp(f"{server}-{loop}"), loop=loop)
    try:
        yield running
    finally:
        running.stop()


def burst(served: Served, requests: int = REQUESTS) -> None:
    """``requests`` one-row requests to the async view from ``CLIENTS`` threads, a connection each; each answer
    checked (the scale model doubles its input)."""

    def score(index: int) -> tuple[int, Any]:
        return served.call("POST", "/ascore", {"rows": [[index, index, index, index]]})

    with ThreadPoolExecutor(CLIENTS) as clients:
        answers = list(clients.map(score, range(requests)))
    for index, (status, body) in enumerate(answers):
        assert status == 200, body
        assert body == {"y": [[2.0 * index] * 4], "version": 1}


def test_views_run_on_the_loop_the_server_was_told_to_use(served: Served) -> None:
    status, body = served.call("GET", "/loop")
    assert status == 200
    assert body["loop"] == LOOPS[served.loop]


def test_concurrent_requests_to_an_async_view_share_runs(served: Served) -> None:
    """Requests that reach the server together share runs (bursts go on until one does, for at most 30 s)."""

    def rows_run() -> tuple[int, int]:
        version = scale_version(served)
        return version["rows_run"], version["batches_run"]

    bursts_until_shared(served.port, rows_run, clients=CLIENTS)


def test_a_lone_request_is_answered_without_suspending_its_task(served: Served) -> None:
    for _ in range(2):  # (a request right after a burst may still join a group: uvloop's guess goes by traffic)
        assert served.call("POST", "/at-once", {"rows": [[1, 1, 1, 1]]})[0] == 200
    suspended = 0
    for index in range(20):
        status, body = served.call("POST", "/at-once", {"rows": [[index] * 4]})
        assert status == 200, body
        assert body["y"] == [[2.0 * index] * 4]
        suspended += body["suspended"]
    # On asyncio's loop a request is taken as alone when no other callback is due in the loop's iteration; the
    # server's own (the last connection's close, say) sometimes is: 2-3 of 300 lone requests joined a group
    # under uvicorn and hypercorn on a quiet machine, none under daphne, granian, or uvloop (whose guess goes
    # by recent traffic); 3 of 10 once under hypercorn with a test run and a benchmark sharing the machine. A
    # path that suspended every lone request would suspend all 20.
    assert suspended <= 5


def test_an_invalid_body_is_a_400_and_the_server_keeps_serving(served: Served) -> None:
    status, body = served.call("POST", "/ascore", {"rows": [[1, 2]]})
    assert status == 400, body
    assert body["error"] == "invalid_input"
    assert "expected size 4 on axis 1" in body["message"], body
    assert served.call("POST", "/ascore", {"rows": [[3, 3, 3, 3]]}) == (200, {"y": [[6.0] * 4], "version": 1})


def test_invalid_requests_among_concurrent_ones_fail_alone(served: Served) -> None:
    """Every fourth of 64 concurrent requests is invalid (text, a third axis): each of those is a 400 naming
    what is wrong, and the valid ones that arrived with them are answered."""
    invalid = {0: [["a", "b", "c", "d"]], 1: [[[1, 2, 3, 4]]]}

    def score(index: int) -> tuple[int, Any]:
        rows = invalid[index // 4 % 2] if index % 4 == 0 else [[index] * 4]
        return served.call("POST", "/at-once", {"rows": rows})

    with ThreadPoolExecutor(CLIENTS) as clients:
        answers = list(clients.map(score, range(64)))
    for index, (status, body) in enumerate(answers):
        if index % 4 == 0:
            assert status == 400 and body["error"] == "invalid_input", body
            expected = "expected numbers of dtype float32" if index // 4 % 2 == 0 else "expected 2 dimensions"
            assert expected in body["message"], body
        else:
            assert status == 200 and body["y"] == [[2.0 * index] * 4], body


class Load:
    """Client threads sending requests to the async view, each on a new connection, until stopped; what each got:
    a status, or the name of the connection error."""

    def __init__(self, served: Served, clients: int = 8) -> None:
        self._served = served
        self._stop = threading.Event()
        self.outcomes: list[int | str] = []
        self._threads = [threading.Thread(target=self._send) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _send(self) -> None:
        while not self._stop.is_set():
            try:
                status, _body = self._served.call("POST", "/ascore", {"rows": [[1, 1, 1, 1]]})
            except (OSError, http.client.HTTPException) as exc:  # (the server stopping: refused, reset, closed)
                self.outcomes.append(type(exc).__name__)
                time.sleep(0.01)
            else:
                self.outcomes.append(status)

    def wait_for_answers(self, count: int) -> None:
        deadline = time.monotonic() + 30
        while self.outcomes.count(200) < count:
            assert time.monotonic() < deadline, self.outcomes[-20:]
            time.sleep(0.01)

    def end(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def assert_stopped_cleanly(served: Served, load: Load, stopped_in_s: float) -> None:
    output = served.output()
    assert stopped_in_s < STOP_BOUND_S, output
    assert served.process.returncode == 0, output
    assert not served.left_behind, output  # its workers exited too
    assert not [text for text in tracebacks(output) if LIBRARY_FRAME.search(text)], output
    assert "inprocserve:" not in output and "Internal Server Error" not in output, output
    # every request was answered, or refused or cut off as the server went: none failed inside it
    assert all(outcome == 200 or isinstance(outcome, str) for outcome in load.outcomes), set(load.outcomes)


LIBRARY_FRAME = re.compile(r'[/\\](inprocserve|inprocserve_django)[/\\][^/\\]+\.py"')


def tracebacks(output: str) -> list[str]:
    """Each traceback in a server's output, up to its exception's line. (hypercorn on Python 3.11 logs some of
    its own as it stops: asyncio's ``StreamReaderProtocol`` asks a connection's cancelled task for its error.)"""
    found: list[str] = []
    lines = output.splitlines()
    for start, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last):"):
            end = start + 1
            while end < len(lines) and lines[end].startswith((" ", "\t")):
                end += 1
            found.append("\n".join(lines[start : end + 1]))
    return found


STOPPED = [
    ("daphne", "asyncio", signal.SIGTERM),
    ("daphne", "asyncio", signal.SIGINT),
    ("hypercorn", "asyncio", signal.SIGTERM),
    ("hypercorn", "asyncio", signal.SIGINT),
    ("granian", "uvloop", signal.SIGTERM),
    ("granian", "uvloop", signal.SIGINT),
]


@pytest.mark.parametrize(
    ("server", "loop", "signum"), STOPPED, ids=[f"{s}-{signal.Signals(n).name}" for s, _loop, n in STOPPED]
)
def test_the_server_stops_promptly_under_load(server: str, loop: str, signum: int, tmp_path: Path) -> None:
    _needs(server, loop)
    served = serve(server, tmp_path, loop=loop)
    load = Load(served)
    try:
        load.wait_for_answers(20)
        stopped_in_s = served.stop(signum, bound_s=STOP_BOUND_S)
    finally:
        load.end()
        served.stop(signal.SIGKILL)
    assert_stopped_cleanly(served, load, stopped_in_s)


def test_granian_with_two_workers_answers_from_both_and_stops(tmp_path: Path) -> None:
    _needs("granian", "uvloop")
    served = serve("granian", tmp_path, loop="uvloop", workers=2)
    try:
        workers: set[int] = set()
        deadline = time.monotonic() + 30
        while len(workers) < 2:  # (each worker answers once it has started; connections go to either)
            assert time.monotonic() < deadline, workers
            status, body = served.call("GET", "/loop")
            assert status == 200 and body["loop"] == LOOPS["uvloop"], body
            workers.add(body["pid"])
        burst(served, REQUESTS // 2)
        status, body = served.call("POST", "/ascore", {"rows": [[1, 2]]})
        assert status == 400 and body["error"] == "invalid_input", body
        load = Load(served)
        try:
            load.wait_for_answers(20)
            stopped_in_s = served.stop(signal.SIGTERM, bound_s=STOP_BOUND_S)
        finally:
            load.end()
    finally:
        served.stop(signal.SIGKILL)
    assert_stopped_cleanly(served, load, stopped_in_s)  # (both workers too)


DRAINED = [("hypercorn", "asyncio"), ("granian", "uvloop"), ("daphne", "asyncio")]


@pytest.mark.parametrize(("server", "loop"), DRAINED, ids=[server for server, _loop in DRAINED])
def test_a_request_running_at_the_stop_is_answered_or_cut_and_the_server_exits(
    server: str, loop: str, tmp_path: Path
) -> None:
    """SIGTERM while a long request (2,000 rows of an MLP: 0.2-1 s) is queued or running on a worker thread:
    hypercorn and granian wait for it (hypercorn for up to its --graceful-timeout, 3 s by default), and its
    answer reaches the client through the stopping loop; daphne cuts it at once (its own choice) and exits once
    the run ends (the library's exit hook waits for runs inside onnxruntime). Either way the process exits by
    itself, promptly."""
    _needs(server, loop)
    onnxruntime = pytest.importorskip("onnxruntime")
    model = save_model(build_mlp_model((4, 1024, 1024, 1024, 4), softmax=False), tmp_path / "models", "scale", 1)
    rows = np.random.default_rng(0).standard_normal((2000, 4), dtype=np.float32)
    expected = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": rows})[0]
    served = serve(server, tmp_path, loop=loop)
    answer: list[tuple[int, Any] | str] = []

    def long_request() -> None:
        try:
            answer.append(served.call("POST", "/ascore", {"rows": rows.tolist()}))
        except (OSError, http.client.HTTPException, ValueError) as exc:  # (ValueError: a body cut short)
            answer.append(type(exc).__name__)

    client = threading.Thread(target=long_request)
    try:
        client.start()
        deadline = time.monotonic() + 30
        while scale_version(served)["in_flight"] == 0:  # until its run has started
            assert time.monotonic() < deadline and client.is_alive(), answer
            time.sleep(0.01)
        stopped_in_s = served.stop(signal.SIGTERM, bound_s=STOP_BOUND_S)
        client.join(timeout=30)
    finally:
        served.stop(signal.SIGKILL)
    output = served.output()
    assert stopped_in_s < STOP_BOUND_S and served.process.returncode == 0, output
    assert not served.left_behind, output
    assert not [text for text in tracebacks(output) if LIBRARY_FRAME.search(text)], output
    if server == "daphne":  # (daphne kills the application instances still running when it stops)
        # cut before its answer began, or between the answer's head and its body (Django sends them apart:
        # a run that ends as the stop comes), or answered whole
        cut = (["RemoteDisconnected"], ["ConnectionResetError"], ["IncompleteRead"])
        assert answer in cut or answer[0][0] == 200, answer
        return
    [(status, body)] = answer
    assert status == 200, body
    np.testing.assert_allclose(np.asarray(body["y"], dtype=np.float32), expected, rtol=1e-4, atol=1e-4)
