"""The numbers a fleet shows under a real gunicorn (``--preload``, several workers): the metrics set up as
docs/observability.md's "Under gunicorn" hook says (every worker's port, summed, counts every request sent,
and a worker replaced after a SIGKILL exports again), and the status page, which is one worker's."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from inprocserve.testing import build_mlp_model, save_model

from .ports import listening_socket, reserved_port
from .processes import stop_process
from .test_doc_snippets_docsa import blocks, metrics_page

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gunicorn's fork hooks and /proc: Linux")

APP = """
import os
import numpy as np
import inprocserve

_server = None

def build():
    global _server
    if _server is None:
        _server = inprocserve.Server(repository=os.environ["METRICS_TEST_REPOSITORY"])
    return _server

inprocserve.build_after_fork(build)

def app(environ, start_response):
    build().predict("mlp", np.ones((1, 4), np.float32))
    start_response("200 OK", [("Connection", "close")])
    return [str(os.getpid()).encode()]
"""

COUNT = re.compile(r'^inprocserve_request_duration_seconds_count\{[^}]*outcome="ok"[^}]*\} (\S+)$', re.MULTILINE)


def requests_counted(ports: list[int]) -> dict[int, float]:
    """Each exporting port's count of requests answered ``ok`` (the histogram's ``_count`` over its series)."""
    counted = {}
    for port in ports:
        page = metrics_page(port)
        if page is not None:
            counted[port] = sum(float(value) for value in COUNT.findall(page))
    return counted


FLASK_APP = """
import os
import numpy as np
from flask import Flask
from inprocserve_flask import Inprocserve, predict

app = Flask(__name__)
app.config.update(
    INPROCSERVE_REPOSITORY=os.environ["METRICS_TEST_REPOSITORY"],
    INPROCSERVE_EAGER=True,
    INPROCSERVE_STATUS_PAGE=True,
    INPROCSERVE_ADMIN_TOKEN="s3cret",
)
Inprocserve(app)

@app.get("/")
def score():
    predict("mlp", np.ones((1, 4), np.float32))
    return str(os.getpid())
"""


@contextmanager
def fleet(
    tmp_path: Path,
    ports: list[int],
    *,
    workers: int = 2,
    app: str = APP,
    conf: str | None = None,
    worker_class: tuple[str, ...] = ("gthread", "--threads", "2"),
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """gunicorn ``--preload`` with the docs' hook, or ``conf`` (the port range replaced by ``ports``): master
    and URL."""
    if conf is None:
        (conf,) = [block for block in blocks("docs/observability.md", "## Setup") if "def post_fork" in block]
    (tmp_path / "gunicorn.conf.py").write_text(conf.replace("range(9464, 9464 + 8)", repr(ports)))
    (tmp_path / "metrics_app.py").write_text(app)
    save_model(build_mlp_model((4, 8, 2)), tmp_path / "models", "mlp")
    listener = listening_socket()
    base = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    command = [
        sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "--workers", str(workers),
        "--worker-class", *worker_class, "--preload", "--graceful-timeout", "5",
        "--bind", f"fd://{listener.fileno()}", "metrics_app:app",
    ]  # fmt: skip
    log = tmp_path / "gunicorn.log"
    with listener, open(log, "wb") as output:
        master = subprocess.Popen(
            command, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT, pass_fds=[listener.fileno()],
            env={**os.environ, "METRICS_TEST_REPOSITORY": str(tmp_path / "models")},
        )  # fmt: skip
    try:
        yield master, base
    finally:
        stop_process(master)


def send(base: str, count: int) -> Counter[int]:
    """``count`` requests, one connection each; how many each worker (by pid) answered."""
    answered: Counter[int] = Counter()
    for _ in range(count):
        with urllib.request.urlopen(base, timeout=30) as answer:
            answered[int(answer.read())] += 1
    return answered


def counted_at_least(ports: list[int], total: float) -> dict[int, float] | None:
    counted = requests_counted(ports)
    return counted if sum(counted.values()) >= total else None


def wait_for(check, what: str, seconds: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return found


def test_the_workers_ports_add_up_to_every_request_sent(tmp_path: Path) -> None:
    ports = [reserved_port() for _ in range(4)]
    with fleet(tmp_path, ports) as (_, base):
        wait_for(lambda: len(requests_counted(ports)) == 2, "two workers exporting")
        answered = send(base, 40)
        counted = wait_for(lambda: counted_at_least(ports, 40), "40 counted", seconds=10)
    assert sum(counted.values()) == 40, (counted, answered)
    assert len(counted) == 2


PROCESS_MEMORY = re.compile(r"^process_memory_usage_bytes(?:\{[^}]*\})? (\S+)$", re.MULTILINE)


def test_every_worker_exports_its_own_cpu_time_and_resident_memory(tmp_path: Path) -> None:
    """The docs' "Process and model memory" reads each worker's ``process_memory_usage_bytes`` as the total its
    models' ``inprocserve_model_memory_bytes`` add to: the hook must set the system metrics up in the worker, on
    its own exporter, as the snippet for a process that never forks does."""
    ports = [reserved_port() for _ in range(4)]
    with fleet(tmp_path, ports) as (_, base):
        wait_for(lambda: len(requests_counted(ports)) == 2, "two workers exporting")
        send(base, 4)
        pages = [page for port in ports if (page := metrics_page(port)) is not None]
    assert len(pages) == 2
    for page in pages:
        (memory,) = PROCESS_MEMORY.findall(page) or [None]
        assert memory is not None and float(memory) > 10 * 2**20, page[-3000:]
        user_cpu = r'^process_cpu_time_seconds_total\{[^}]*type="user"[^}]*\} \S+$'
        assert re.search(user_cpu, page, re.MULTILINE), page[-3000:]


def gevent_conf() -> str:
    """docs/observability.md's gunicorn configuration for ``-k gevent``: its hook, with ``post_fork`` replaced
    by the ``post_worker_init`` the docs give for gevent."""
    setup = blocks("docs/observability.md", "## Setup")
    (conf,) = [block for block in setup if "def post_fork" in block]
    (gevent,) = [block for block in setup if "def post_worker_init" in block]
    return conf.split("\ndef post_fork(", 1)[0] + "\n" + gevent


def test_under_gevent_workers_every_scrape_is_answered(tmp_path: Path) -> None:
    """gunicorn's gevent worker patches the process after ``post_fork``: a metrics server started there, a real
    thread, handed each scrape to a thread made after the patch, a greenlet of a hub that never ran, and the
    scrape hung (3 of 8 timed out, with and without inprocserve in the app)."""
    pytest.importorskip("gevent")
    ports = [reserved_port() for _ in range(4)]
    with fleet(tmp_path, ports, conf=gevent_conf(), worker_class=("gevent",)) as (_, base):
        wait_for(lambda: len(requests_counted(ports)) == 2, "two workers exporting")
        send(base, 10)
        exporting = list(requests_counted(ports))
        scrapes = []
        for _ in range(4):
            scrapes += [metrics_page(port) is not None for port in exporting]
        counted = requests_counted(ports)
    assert all(scrapes), scrapes
    assert sum(counted.values()) == 10, counted
    log = (tmp_path / "gunicorn.log").read_text()
    assert "SIGKILL" not in log and "Traceback" not in log, log  # (each worker stopped by itself)


def test_a_worker_killed_and_replaced_exports_on_the_freed_port(tmp_path: Path) -> None:
    ports = [reserved_port() for _ in range(4)]
    with fleet(tmp_path, ports) as (_, base):
        wait_for(lambda: len(requests_counted(ports)) == 2, "two workers exporting")
        answered = send(base, 20)
        killed = wait_for(lambda: counted_at_least(ports, 20), "20 counted", seconds=10)
        victim = answered.most_common(1)[0][0]  # (10 or more counts on its port: the replacement answers fewer first)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in send(base, 4) and len(requests_counted(ports)) == 2, "a replacement exporting")
        replaced = requests_counted(ports)
        send(base, 20)
        after = wait_for(lambda: counted_at_least(ports, sum(replaced.values()) + 20), "+20", seconds=10)
    assert sum(after.values()) == sum(replaced.values()) + 20, after
    # The replacement took its predecessor's port and counts from zero there: the docs say that this target's
    # counters then go down, a reset that rate() and increase() take for one, and a plain sum does not.
    assert set(replaced) == set(killed) and any(replaced[port] < killed[port] for port in killed), (killed, replaced)


def test_the_status_page_says_which_worker_drew_it(tmp_path: Path) -> None:
    """Under several workers each load of the status page is drawn by whichever worker took the connection,
    from its own counts: a page that does not say which worker it is reads as the fleet's numbers, and two
    loads a second apart disagree with nothing on them to say why."""
    with fleet(tmp_path, [reserved_port()], app=FLASK_APP) as (_, base):
        port = int(base.rsplit(":", 1)[1].strip("/"))
        seen: dict[int, str] = {}
        for _ in range(40):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:  # one connection: the page comes from the worker that answered the request before it
                connection.request("GET", "/")
                pid = int(connection.getresponse().read())
                connection.request("GET", "/-/inprocserve/status", headers={"Authorization": "Bearer s3cret"})
                response = connection.getresponse()
                assert response.status == 200
                seen[pid] = response.read().decode()
            finally:
                connection.close()
            if len(seen) == 2:
                break
    # (both workers, as a rule; a host busy enough may hand every connection to one, whose page still names it)
    assert seen, seen.keys()
    for pid, page in seen.items():
        header = page.split("<header>", 1)[1].split("</header>", 1)[0]
        assert f"worker {pid}" in header, header  # whose numbers these are
        assert socket.gethostname() in header, header
