"""Snippets and tables of docs/observability.md, operations.md, performance.md, deployment.md and scaling.md,
as a user copies them, run against real models (tests/test_doc_snippets.py does README.md and quickstart.md).

These documents were checked by hand only, and drifted from the code: a call that raised ``TypeError`` as the
fleet table wrote it, an HTTP status the outcomes table did not name. Each test takes its snippet from the
document by its section's heading, so an edit of either side that breaks the other fails here.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import inprocserve
from inprocserve import web
from inprocserve._telemetry import outcome
from inprocserve.testing import build_mlp_model, save_model

from .ports import listening_socket, reserved_port

ROOT = Path(__file__).resolve().parent.parent


def section(document: str, heading: str) -> str:
    """The text of ``document``'s section that starts at the line ``heading`` and ends at the next heading of
    the same level or above."""
    lines = (ROOT / document).read_text().splitlines()
    assert heading in lines, f"{document} has no heading {heading!r}"
    level = len(heading.split(" ", 1)[0])
    kept: list[str] = []
    fenced = False  # (a "# comment" line inside a code block is no heading)
    for line in lines[lines.index(heading) + 1 :]:
        fenced ^= line.lstrip().startswith("```")
        if not fenced and re.match(f"#{{1,{level}}} ", line):
            break
        kept.append(line)
    return "\n".join(kept) + "\n"


def blocks(document: str, heading: str, language: str = "python") -> list[str]:
    """The ``language`` code blocks of a section (see :func:`section`), without their indentation."""
    fence = re.compile(r"^( *)```" + re.escape(language) + r"\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
    found = fence.findall(section(document, heading))
    assert found, f"{document}, {heading!r}: no {language} block"
    return ["\n".join(line[len(indent) :] for line in code.splitlines()) + "\n" for indent, code in found]


def save_fraud(repository: Path, version: int = 1, *, input_name: str = "x") -> None:
    """The docs' "fraud" model: ``input_name`` [batch, 4] -> ``probability`` [batch, 2]."""
    model = build_mlp_model((4, 8, 2), input_name=input_name)
    model.graph.node[-1].output[0] = "probability"
    model.graph.output[0].name = "probability"
    save_model(model, repository, "fraud", version)


# -- docs/observability.md -------------------------------------------------------------------------------

PROMETHEUS_CHILD = r"""
import json, os, sys, urllib.request
import numpy as np
setup, prometheus, buckets, by_model = sys.argv[2:6]
namespace = {}
exec(setup, namespace)  # the tracer provider (its OTLP exporter never gets to send: os._exit below)
exec(prometheus.replace("start_http_server(9464,", f"start_http_server({sys.argv[1]},"), namespace)
exec(buckets, namespace)
exec(by_model, namespace)
import inprocserve
from inprocserve.testing import build_mlp_model, save_model
save_model(build_mlp_model((4, 8, 2)), sys.argv[6], "fraud")
with inprocserve.Server(repository=sys.argv[6]) as server:
    for _ in range(3):
        server.predict("fraud", {"x": np.ones((1, 4), np.float32)})
    page = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
print(json.dumps(sorted({line.split(" ")[0] for line in page.splitlines() if not line.startswith("#")})))
sys.stdout.flush()
os._exit(0)
"""


def test_the_observability_setup_serves_the_libraries_and_the_process_metrics(tmp_path: Path) -> None:
    setup, prometheus, *_ = blocks("docs/observability.md", "## Setup")  # (then the gunicorn and uvicorn ones)
    (buckets,) = blocks("docs/observability.md", "### Histogram buckets")
    (by_model,) = blocks("docs/observability.md", "### Series of released versions")
    port = reserved_port()
    result = subprocess.run(
        [sys.executable, "-c", PROMETHEUS_CHILD, str(port), setup, prometheus, buckets, by_model, str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    series = json.loads(result.stdout.strip().splitlines()[-1])
    names = {line.split("{")[0] for line in series}
    # "In Prometheus the names become ..." and "Process and model memory"
    assert {"inprocserve_request_duration_seconds_bucket", "inprocserve_model_memory_bytes"} <= names
    assert "process_memory_usage_bytes" in names
    assert any(line.startswith("process_cpu_time_seconds_total{") and 'type="user"' in line for line in series)


PROMETHEUS_ALONE_CHILD = r"""
import sys, urllib.request
sys.modules["opentelemetry.exporter.otlp"] = None  # the prometheus extra alone: no OTLP exporter
namespace = {}
exec(sys.argv[2].replace("start_http_server(9464,", f"start_http_server({sys.argv[1]},"), namespace)
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read()
"""


def test_the_observability_prometheus_snippet_runs_without_the_tracing_one() -> None:
    """A team that wants metrics only installs the prometheus extra, which has no OTLP exporter, so it cannot
    run the tracing snippet before this one; this one used that snippet's ``resource``: NameError."""
    _, prometheus, *_ = blocks("docs/observability.md", "## Setup")
    result = subprocess.run(
        [sys.executable, "-c", PROMETHEUS_ALONE_CHILD, str(reserved_port()), prometheus],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]


GUNICORN_CHILD = r"""
import json, socket, sys
from types import SimpleNamespace
taken, free = int(sys.argv[1]), int(sys.argv[2])
conf = sys.argv[3].replace("range(9464, 9464 + 8)", f"[{taken}, {free}]")
namespace = {}
exec(conf, namespace)
errors = []
namespace["post_fork"](None, SimpleNamespace(log=SimpleNamespace(error=lambda *a: errors.append(a))))
from opentelemetry import metrics
provider = metrics.get_meter_provider()
resource = dict(provider._sdk_config.resource.attributes)
import urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{free}/metrics", timeout=10).read()
print(json.dumps({"instance": resource.get("service.instance.id"), "errors": len(errors),
                  "expected": f"{socket.gethostname()}:{free}"}))
"""


def test_the_gunicorn_post_fork_hook_takes_the_first_free_metrics_port() -> None:
    (conf,) = [block for block in blocks("docs/observability.md", "## Setup") if "def post_fork" in block]
    with listening_socket() as taken:  # "the first port no other worker of this host holds"
        result = subprocess.run(
            [sys.executable, "-c", GUNICORN_CHILD, str(taken.getsockname()[1]), str(reserved_port()), conf],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["errors"] == 0 and answer["instance"] == answer["expected"]


UVICORN_APP = """
import os
import metrics  # the docs' module, first
from opentelemetry import metrics as otel_metrics
otel_metrics.get_meter("check").create_counter("worker_started").add(1, {"pid": str(os.getpid())})
async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})
"""


def metrics_page(port: int) -> str | None:
    """``/metrics`` of 127.0.0.1:``port``; ``None`` while nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()  # type: ignore[no-any-return]
    except OSError:
        return None


def test_under_uvicorn_workers_each_worker_exports_its_own_metrics_on_a_port_of_its_own(tmp_path: Path) -> None:
    """uvicorn --workers has no post_fork: each spawned worker imports the module, which takes a free port."""
    setup = blocks("docs/observability.md", "## Setup")
    (module,) = [block for block in setup if "def start_metrics_exporter" in block]
    ports = [reserved_port() for _ in range(3)]
    (tmp_path / "metrics.py").write_text(module.replace("range(9464, 9464 + 8)", repr(ports)))
    (tmp_path / "app.py").write_text(UVICORN_APP)
    listener = listening_socket()
    command = [sys.executable, "-m", "uvicorn", "--workers", "2", "--lifespan", "off", "--app-dir", str(tmp_path)]
    server = subprocess.Popen(
        [*command, "--fd", str(listener.fileno()), "app:app"], pass_fds=[listener.fileno()],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    listener.close()
    try:
        deadline = time.monotonic() + 60
        pages = [metrics_page(port) for port in ports]
        while not all(page and "worker_started" in page for page in pages[:2]) and time.monotonic() < deadline:
            time.sleep(0.2)
            pages = [metrics_page(port) for port in ports]
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    exported = [page for page in pages if page is not None]
    assert len(exported) == 2 and pages[2] is None, output[-2000:]  # the first free ports, one a worker
    pids = [re.findall(r'^worker_started_total\{.*pid="(\d+)"', page, re.MULTILINE) for page in exported]
    assert len(pids[0]) == len(pids[1]) == 1 and pids[0] != pids[1]  # each worker's own series, not a sum
    for port, page in zip(ports, exported, strict=False):
        assert f'service_instance_id="{socket.gethostname()}:{port}"' in page  # target_info: the worker's port
        assert re.search(r"^process_memory_usage_bytes(\{[^}]*\})? \S+$", page, re.MULTILINE)  # this worker's memory


FORKED_RESOURCE = """
import json, os
from importlib.metadata import version
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource

before = MeterProvider(resource=Resource.create({"service.name": "fraud-api", "service.instance.id": "master"}))
read, write = os.pipe()
if os.fork() == 0:  # a gunicorn worker: the master's provider, and one made in post_fork
    after = MeterProvider(resource=Resource.create({"service.name": "fraud-api", "service.instance.id": "worker"}))
    ids = [provider._sdk_config.resource.attributes["service.instance.id"] for provider in (before, after)]
    os.write(write, json.dumps(ids).encode())
    os._exit(0)
os.wait()
print(json.dumps([version("opentelemetry-sdk"), *json.loads(os.read(read, 1000))]))
"""


def test_the_pushing_paragraph_says_what_a_worker_makes_of_a_resource_created_before_the_fork() -> None:
    """From opentelemetry-sdk 1.44 on, a provider created before the fork does not keep the master's identity in
    each worker, as the paragraph said: the SDK replaces its service.instance.id by a random one, set or not."""
    document = (ROOT / "docs" / "observability.md").read_text()
    paragraph = document.split("**Pushing instead (OTLP).**", 1)[1].split("\n\n", 1)[0]
    result = subprocess.run([sys.executable, "-c", FORKED_RESOURCE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    sdk, made_before, made_after = json.loads(result.stdout)
    assert made_after == "worker"  # what the paragraph advises: the id given in post_fork is kept
    if tuple(int(part) for part in sdk.split(".")[:2]) >= (1, 44):
        assert made_before != "master", sdk
        assert "From 1.44 on" in paragraph and "random `service.instance.id`" in paragraph, paragraph
    else:
        assert made_before == "master", sdk
        assert "before 1.44 keep it as it is in every worker" in paragraph, paragraph


def test_the_shadow_dropped_help_names_every_reason_the_metrics_table_gives() -> None:
    """Prometheus shows an instrument's description as its HELP: an operator reading why shadow copies drop
    sees every value of its ``inprocserve_shadow_result`` label there (over_budget was the commonest, and missing)."""
    from opentelemetry.sdk.metrics import MeterProvider

    from inprocserve._telemetry import Metrics

    document = (ROOT / "docs" / "observability.md").read_text()
    (row,) = [
        line
        for line in document.splitlines()
        if line.startswith("| `inprocserve.shadow.dropped` |") and "why it was dropped" in line
    ]
    reasons = re.findall(r"`([a-z_]+)`", row.split("why it was dropped", 1)[1])
    provider = MeterProvider()
    try:
        description = Metrics(meter=provider.get_meter("inprocserve")).shadow_dropped.description
    finally:
        provider.shutdown()
    assert len(reasons) == 4 and all(reason in description for reason in reasons), (reasons, description)


def test_the_shipped_scrape_config_lists_every_port_of_the_post_fork_hooks_range() -> None:
    """A SIGHUP forks the new workers while the old ones hold their ports: the range is twice --workers, and a
    port Prometheus is not told of is a worker whose requests no dashboard counts."""
    (conf,) = [block for block in blocks("docs/observability.md", "## Setup") if "def post_fork" in block]
    (ports,) = re.findall(r"^METRICS_PORTS = (.+?)  #", conf, re.MULTILINE)
    scrape = yaml.safe_load((ROOT / "docs" / "observability" / "prometheus.yml").read_text())
    (targets,) = [group["targets"] for job in scrape["scrape_configs"] for group in job["static_configs"]]
    documented = list(eval(ports, {"__builtins__": {}, "range": range}))  # (the snippet's own expression)
    assert sorted(int(target.rsplit(":", 1)[1]) for target in targets) == documented


def test_no_shipped_metrics_server_listens_on_every_interface() -> None:
    """``start_http_server(port)`` binds 0.0.0.0 and serves /metrics to anyone: every call the docs' code blocks
    and the examples show names the address Prometheus scrapes."""
    code = [
        (path.relative_to(ROOT), block)
        for path in (ROOT / "docs").rglob("*.md")
        for block in re.findall(r"^ *```\w*\n(.*?)^ *```", path.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    ]
    code += [(path.relative_to(ROOT), path.read_text(encoding="utf-8")) for path in (ROOT / "examples").rglob("*.py")]
    calls = [(path, call) for path, text in code for call in re.findall(r"start_http_server\([^)]*\)", text)]
    assert len(calls) >= 2, f"the docs' two metrics servers were not found: the pattern is stale ({calls})"
    assert [(path, call) for path, call in calls if "addr=" not in call] == []


def outcome_rows() -> Iterator[tuple[str, list[type[BaseException]], set[int]]]:
    """Each row of the outcomes table: the outcome, the exception classes it names, the HTTP statuses."""
    for line in section("docs/observability.md", "### Outcomes").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`(\w+)`", cells[1])
        found = [getattr(inprocserve, name, None) or getattr(builtins, name, None) for name in names]
        classes = [cls for cls in found if isinstance(cls, type) and issubclass(cls, BaseException)]
        statuses = {int(number) for number in re.findall(r"\b[2-5]\d\d\b", cells[3])}
        yield cells[0].strip("`"), classes, statuses


def operations_only() -> set[type[BaseException]]:
    """The errors the outcomes section says no request records (rollout operations' refusals)."""
    text = section("docs/observability.md", "### Outcomes")
    (line,) = [line for line in text.split("\n\n") if "never a request's" in line]
    return {getattr(inprocserve, name) for name in re.findall(r"`(\w+Error)`", line)}


def test_every_library_error_has_the_outcome_and_http_status_the_outcomes_table_gives() -> None:
    rows = list(outcome_rows())
    outcomes = {"ok", "client_error", "overloaded", "unavailable", "deadline_exceeded", "server_error"}
    assert {row[0] for row in rows} == outcomes
    assert operations_only() == {inprocserve.PromotionRefusedError, inprocserve.NothingToRollBackError}
    errors = [
        cls for name in inprocserve.__all__ if isinstance(cls := getattr(inprocserve, name), type)
        and issubclass(cls, inprocserve.InprocserveError) and cls not in operations_only()
    ]  # fmt: skip
    for cls in errors:
        # the row naming the class or its nearest base; "any unexpected exception" is server_error's
        nearest = min(
            ((cls.__mro__.index(named), row) for row in rows for named in row[1] if issubclass(cls, named)),
            default=(0, next(row for row in rows if row[0] == "server_error")),
            key=lambda found: found[0],
        )[1]
        error = cls("a message")
        assert outcome(error) == nearest[0], cls.__name__
        assert (web.http_status(error) or 500) in nearest[2], (cls.__name__, web.http_status(error), nearest)


# -- docs/operations.md -----------------------------------------------------------------------------------


def test_the_fleet_tables_python_calls_change_the_control_file(tmp_path: Path) -> None:
    table = section("docs/operations.md", "## Running a fleet").splitlines()
    row = next(line for line in table if line.startswith("| Python |"))
    calls = [call for call in re.findall(r"`([^`]+)`", row) if call.startswith("server.")]
    for version in (1, 2, 3, 4):
        save_fraud(tmp_path, version)
    with inprocserve.Server(repository=tmp_path) as server:
        states = []
        for call in calls:
            eval(call, {"server": server})  # each as the table writes it
            states.append(json.loads((tmp_path / ".inprocserve-control.json").read_text())["models"].get("fraud", {}))
    made = dict(zip(calls, states, strict=True))
    assert made['server.switch("fraud", 3)']["stable"] == 3
    assert made['server.rollback("fraud")']["stable"] == 4  # (the latest version answered before the switch)
    assert made['server.set_canary("fraud", 4, percent=10)']["canary_percent"] == 10
    removals = [state for call, state in made.items() if call.startswith('server.set_canary("fraud", None')]
    assert removals, f"no call of the table removes the canary: {calls}"
    assert removals[0]["canary_version"] is None
    assert made['server.kill("fraud")']["kill"] is True and made['server.resume("fraud")']["kill"] is False


# -- docs/performance.md, docs/deployment.md ----------------------------------------------------------------


def test_the_batch_scoring_snippet_scores_arrays_and_batches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    save_fraud(tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "features.npy", np.random.default_rng(0).random((300, 4), dtype=np.float32))
    (snippet,) = blocks("docs/performance.md", "## Batch scoring")
    published: list[np.ndarray] = []
    with inprocserve.Server(repository="models/") as server:
        namespace: dict[str, Any] = {
            "np": np, "server": server, "decode": np.asarray, "publish": published.append,
            "consumer": [np.ones((3, 4), np.float32), np.ones((5, 4), np.float32)],
        }  # fmt: skip
        exec(snippet, namespace)
    assert namespace["scores"].shape == (300, 2)
    assert [answer.shape for answer in published] == [(3, 2), (5, 2)]  # "one answer per batch, in order"


def test_the_offline_scoring_job_writes_one_score_per_row(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    save_fraud(tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    rows = np.random.default_rng(1).random((5000, 4), dtype=np.float32)
    np.save(tmp_path / "transactions.npy", rows)
    (snippet,) = blocks("docs/deployment.md", "## Offline batch scoring")
    exec(snippet, {})
    with inprocserve.Server(repository=tmp_path / "models") as server:
        expected = np.concatenate([answer["probability"] for answer in server.predict_many("fraud", rows)])
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), expected, rtol=1e-6)


AFFINITY_APP = """
import os, threading

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    # (a request thread of gthread's pool: started after post_fork)
    return [f"{os.getpid()} {sorted(os.sched_getaffinity(0))} {threading.current_thread().name}".encode()]
"""


def _workers_cores(base: str, wanted: int, master: subprocess.Popen[bytes], log: Path) -> dict[int, list[int]]:
    """Ask until ``wanted`` workers answered: each worker's pid and the cores its request thread may use."""
    seen: dict[int, list[int]] = {}
    deadline = time.monotonic() + 60
    while len(seen) < wanted:
        assert master.poll() is None and time.monotonic() < deadline, log.read_text()
        try:
            with urllib.request.urlopen(f"{base}/", timeout=5) as answer:
                pid, cores, _thread = answer.read().decode().split(" ", 2)
            seen[int(pid)] = json.loads(cores)
        except OSError:
            time.sleep(0.05)
    return seen


def test_the_one_core_per_worker_hook_gives_each_gunicorn_worker_a_core_of_its_own(tmp_path: Path) -> None:
    """Under a real gunicorn: two gthread workers on two cores, each worker's request threads on one core, not
    the other's; a worker killed and replaced takes the core it left."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs a machine with two cores or more")
    if shutil.which("taskset") is None:
        pytest.skip("needs taskset (util-linux) to give gunicorn exactly two cores")
    cores = sorted(os.sched_getaffinity(0))[:2]  # (two workers: on a larger host they take two of its cores)
    (conf,) = blocks("docs/deployment.md", "### One core per worker")
    (tmp_path / "gunicorn.conf.py").write_text(conf)
    (tmp_path / "affinity_app.py").write_text(AFFINITY_APP)
    listener = listening_socket()
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    command = [
        "taskset", "-c", ",".join(map(str, cores)), sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py",
        "--worker-class", "gthread", "--threads", "4", "--workers", "2", "--bind", f"fd://{listener.fileno()}",
        "affinity_app:app",
    ]  # fmt: skip
    log = tmp_path / "gunicorn.log"
    with listener, open(log, "wb") as output:
        master = subprocess.Popen(
            command, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT, pass_fds=[listener.fileno()]
        )
    try:
        workers = _workers_cores(base, 2, master, log)
        assert sorted(core for kept in workers.values() for core in kept) == cores, workers
        # (the worker on the first core: with workers placed by their age instead, its replacement took the
        # other worker's core)
        first = next(pid for pid, kept in workers.items() if kept == cores[:1])
        (second,) = set(workers) - {first}
        os.kill(first, signal.SIGKILL)
        replaced = _workers_cores(base, 2, master, log)  # (the killed one answers no more: its replacement does)
        assert first not in replaced and replaced[second] == workers[second]
        (replacement,) = set(replaced) - {second}
        assert replaced[replacement] == workers[first], (workers, replaced)  # the core the killed one left
    finally:
        master.terminate()
        master.wait(timeout=30)


# -- configuration files of these documents -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "heading"),
    [
        ("docs/performance.md", "## Prediction cache"),
        ("docs/observability.md", "## Drift"),
        ("docs/scaling.md", "## Rollouts across local and remote versions"),
    ],
)
def test_the_config_toml_loads_without_a_warning(document: str, heading: str, tmp_path: Path) -> None:
    (config,) = blocks(document, heading, "toml")
    for version in (1, 2, 3):
        save_fraud(tmp_path, version)
    (tmp_path / "fraud" / "config.toml").write_text(config)
    np.savez(tmp_path / "fraud" / "reference.npz", x=np.random.default_rng(2).random((2000, 4), dtype=np.float32))
    assert inprocserve.check_repository(tmp_path)["problems"] == []
    with inprocserve.Server(repository=tmp_path) as server:
        model = server.status()["models"]["fraud"]
    assert model["config_error"] is None and model["config_warning"] is None
    assert all(version["state"] == "ready" for version in model["versions"].values())


def test_the_remote_toml_is_read_as_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (remote,) = blocks("docs/scaling.md", "## A remote version in the repository", "toml")
    (tmp_path / "fraud" / "3").mkdir(parents=True)
    (tmp_path / "fraud" / "3" / "remote.toml").write_text(remote)
    monkeypatch.setenv("INPROCSERVE_REMOTE_ENV", "FRAUD_MODEL_TOKEN")  # "(one that INPROCSERVE_REMOTE_ENV lists)"
    monkeypatch.setenv("FRAUD_MODEL_TOKEN", "Bearer t")
    checked = inprocserve.check_repository(tmp_path)  # (reads remote.toml, opens no connection)
    assert checked["problems"] == []
    assert checked["models"]["fraud"][3]["remote"] == "http://triton.internal:8000/v2/models/fraud/versions/3"


def test_a_remote_version_loaded_in_code_answers(tmp_path: Path) -> None:
    from flask import Flask
    from inprocserve_flask import Inprocserve
    from werkzeug.serving import make_server

    save_fraud(tmp_path / "remote", 3)  # what the model server serves
    app = Flask("model_server")
    app.config.update(INPROCSERVE_REPOSITORY=str(tmp_path / "remote"), INPROCSERVE_V2_PROTOCOL=True)
    Inprocserve(app)
    model_server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=model_server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    (snippet,) = blocks("docs/scaling.md", "## A remote version in the repository")
    save_fraud(tmp_path / "local", 2)
    try:
        with inprocserve.Server(repository=tmp_path / "local") as server:
            url = f"http://127.0.0.1:{model_server.server_port}"
            exec(snippet.replace("http://triton.internal:8000", url), {"server": server, "inprocserve": inprocserve})
            answer = server.predict("fraud", {"x": np.ones((2, 4), np.float32)}, version=3)
            assert answer.version == 3 and answer["probability"].shape == (2, 2)
            assert server.status()["models"]["fraud"]["versions"]["3"]["backend"] == "remote"
    finally:
        model_server.shutdown()
        Inprocserve.close(app)


def test_the_nonfinite_share_said_to_reach_the_psi_threshold_reaches_it(tmp_path: Path) -> None:
    text = section("docs/observability.md", "## Drift")
    found = re.search(r"about ([\d.]+) % non-finite reaches the usual\s+0\.2", text)
    assert found, "the Drift section no longer names the share of NaN that reaches a PSI of 0.2"
    share = float(found.group(1)) / 100
    save_model(build_mlp_model((4, 8, 2)), tmp_path, "fraud")
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "fraud" / "reference.npz", x=rng.normal(size=(5000, 4)).astype(np.float32))
    (tmp_path / "fraud" / "config.toml").write_text('[drift]\nreference_file = "reference.npz"\nwindow = 1000\n')
    rows = rng.normal(size=(1000, 4)).astype(np.float32)  # the reference's distribution, but for the NaN
    rows[: round(share * 1000), 0] = np.nan
    with inprocserve.Server(repository=tmp_path) as server:
        server.predict("fraud", {"x": rows})
        deadline = time.monotonic() + 10
        while not (drift := server.status()["models"]["fraud"]["versions"]["1"]["drift"])["windows"]:
            assert time.monotonic() < deadline, "the window was never scored"
            time.sleep(0.02)
    assert drift["features"]["x[0]"]["nonfinite"] == pytest.approx(share)
    assert drift["features"]["x[0]"]["psi"] == pytest.approx(0.2, abs=0.03)  # "reaches the usual 0.2"


def test_a_million_row_request_fills_the_windows_the_drift_section_says(tmp_path: Path) -> None:
    text = " ".join(section("docs/observability.md", "## Drift").split())
    found = re.search(r"a request of a million rows with a window of 1,000 copies [\d,]+ rows, scores (\d+) windows "
                      r"and counts (\d+) dropped", text)  # fmt: skip
    assert found, "the Drift section no longer says what a request of a million rows fills"
    scored, dropped = int(found.group(1)), int(found.group(2))
    save_model(build_mlp_model((4, 8, 2)), tmp_path, "fraud")
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "fraud" / "reference.npz", x=rng.normal(size=(5000, 4)).astype(np.float32))
    (tmp_path / "fraud" / "config.toml").write_text(
        '[drift]\nreference_file = "reference.npz"\nwindow = 1000\n[batching]\nmax_request_rows = 1000000\n'
    )
    with inprocserve.Server(repository=tmp_path) as server:
        server.predict("fraud", {"x": rng.normal(size=(1_000_000, 4)).astype(np.float32)})
        deadline = time.monotonic() + 10
        while True:
            drift = server.status()["models"]["fraud"]["versions"]["1"]["drift"]
            if drift["windows"] + drift["dropped_windows"] == 1000 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    # (the ninth window is scored instead of dropped when the scoring thread took one of the 8 meanwhile)
    assert (drift["windows"], drift["dropped_windows"]) in {(scored, dropped), (scored + 1, dropped - 1)}
