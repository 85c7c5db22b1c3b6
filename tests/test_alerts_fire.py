"""Each shipped alert rule fires in a real Prometheus scraping a real fleet, from what the fleet exports.

``tests/test_alert_rules.py`` checks the rules with promtool on series written by hand; here a gunicorn
(``--preload``, 2 gthread workers, the metrics hook of docs/observability.md, "Under gunicorn") serves a Flask
app through the plug-in, and a Prometheus server (Debian's package) scrapes every worker's port with the shipped
rules loaded. The rules are copied with each ``for:`` cut to 0s (and nothing else: the test checks that the
copy's rules are the shipped ones but for that), scraped and evaluated every second. Each alert's condition is
then made with real requests over HTTP: a model slower than the latency budget, requests past its queue
(shed) and past their deadline (``X-Request-Timeout-Ms``), a model that fails inside onnxruntime, a new
version whose file is corrupt (the workers' polls fail to load it; version 1 answers on), a canary that fails
where stable answers, a shadow version that answers otherwise, traffic far from the drift reference. Each
alert must be firing within a bounded wait, with the labels the docs promise (the model, and the shadow version
or the version where the rule keeps them); a healthy model, whose callers send some bad requests too, fires
none, nor do steady traffic's drift and a shadow version that agrees.

Needs Debian's ``prometheus`` package (``make system-deps``); skips, saying so, without it.
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper

from inprocserve.testing import build_scale_model, save_model

from .conftest import build_busy_model
from .ports import reserved_port
from .processes import Prometheus, keep_gunicorns_apart, prometheus_binary, prometheus_server
from .test_doc_snippets_docsa import metrics_page
from .test_gunicorn_metrics import fleet
from .test_telemetry import build_multiple_of_3_model

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gunicorn's fork hooks: Linux")

ALERTS = Path(__file__).resolve().parent.parent / "docs" / "observability" / "alerts.yml"
FIRING_TIMEOUT_S = 90.0
STARTUP_TIMEOUT_S = 60.0

# The slow model: rows of a busy model that one run of a session takes about 0.3 s for (and its queue holds one
# such request), so answered requests wait over the 250 ms budget, and more at once are shed or miss deadlines.
SLOW_WIDTH = 512
SLOW_ROWS = 4000

APP = """
import os
import numpy as np
from flask import Flask, request
from inprocserve_flask import Inprocserve, predict

app = Flask(__name__)
app.config.update(
    INPROCSERVE_REPOSITORY=os.environ["METRICS_TEST_REPOSITORY"],
    INPROCSERVE_EAGER=True,
    INPROCSERVE_POLL_INTERVAL_S=0.5,
)
Inprocserve(app)


@app.post("/score/<name>")
def score(name):
    # {"x": {"shape": [rows, width], "dtype": "float32", "loc": 0, "scale": 1}}: inputs drawn here, so that a
    # request of thousands of rows is a small body
    rng = np.random.default_rng()
    inputs = {
        key: (spec.get("loc", 0) + spec.get("scale", 0) * rng.standard_normal(spec["shape"])).astype(spec["dtype"])
        for key, spec in request.get_json().items()
    }
    result = predict(name, inputs)
    return {"version": result.version, "variant": str(result.variant)}
"""


def rules_firing_at_once(text: str) -> str:
    """The rules file with every ``for:`` set to 0s, the rest of its text as it is."""
    copy, count = re.subn(r"(?m)^(\s+for: )\S+$", r"\g<1>0s", text)
    assert count == text.count("- alert:"), count
    return copy


def _rules(text: str) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"]}


def build_reshape_model(*shape: int) -> onnx.ModelProto:
    """``build_multiple_of_3_model`` with its Reshape to ``shape``: the same signature, x [batch, 4] -> y."""
    model = build_multiple_of_3_model()
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array(shape, np.int64), "shape"))
    return model


def build_repository(repository: Path) -> None:
    save_model(build_busy_model(width=SLOW_WIDTH, layers=16), repository, "slow")
    (repository / "slow" / "config.toml").write_text(
        f"[batching]\nmax_batch_size = {SLOW_ROWS}\nmax_queue_rows = {SLOW_ROWS}\n[pool]\nintra_op_threads = 1\n"
    )
    # fails inside onnxruntime on every batch of 1 or 2 rows: server errors
    save_model(build_multiple_of_3_model(), repository, "broken")
    (repository / "broken" / "config.toml").write_text("[batching]\nmax_batch_size = 2\n[warmup]\nenabled = false\n")
    # a canary of the same signature that fails inside onnxruntime where stable answers (batches of 1 or 2 rows)
    save_model(build_reshape_model(-1, 4), repository, "cand", 1)
    save_model(build_multiple_of_3_model(), repository, "cand", 2)
    (repository / "cand" / "config.toml").write_text(
        '[batching]\nmax_batch_size = 2\n[warmup]\nenabled = false\n[rollout]\nstrategy = "canary"\nstable = 1\n'
        "[rollout.canary]\nversion = 2\npercent = 50\n"
    )
    # a release's version 2 comes later, its file corrupt (release_corrupt_version)
    save_model(build_scale_model(1.0), repository, "released", 1)
    # shadow 2 answers three times stable's figures, shadow 3 the same ones
    save_model(build_scale_model(1.0), repository, "shadowed", 1)
    save_model(build_scale_model(3.0), repository, "shadowed", 2)
    save_model(build_scale_model(1.0), repository, "shadowed", 3)
    (repository / "shadowed" / "config.toml").write_text(
        "[rollout]\nstable = 1\n[rollout.shadow]\nversions = [2, 3]\nmax_abs_diff = 0.01\n"
    )
    # the same reference for both; the traffic of "drifting" is far from it, that of "steady" drawn as it was
    reference = np.random.default_rng(0).standard_normal((2000, 4)).astype(np.float32)
    for name in ("drifting", "steady"):
        save_model(build_scale_model(1.0), repository, name)
        np.savez(repository / name / "reference.npz", x=reference)
        (repository / name / "config.toml").write_text('[drift]\nreference_file = "reference.npz"\nwindow = 400\n')


def release_corrupt_version(repository: Path) -> None:
    """Version 2 of "released" appears, its model.onnx truncated; every worker's poll tries to load it."""
    data = build_scale_model(2.0).SerializeToString()
    staging = repository / "released" / ".2.tmp"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(data[: len(data) // 2])
    staging.rename(repository / "released" / "2")  # (whole, as a release tool moves it in)


def x(rows: int, width: int = 4, *, loc: float = 0.0) -> dict[str, Any]:
    return {"x": {"shape": [rows, width], "dtype": "float32", "loc": loc, "scale": 1.0}}


def post(base: str, model: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(
        f"{base}score/{model}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as error:
        error.read()
        return int(error.code)


def wait_until(check: Any, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return int(answer.status) == 200
    except OSError:
        return False


@pytest.fixture
def fleet_and_prometheus(tmp_path: Path) -> Iterator[tuple[str, Prometheus, Path]]:
    prometheus_binary()  # (skips before a fleet starts where Prometheus is not installed)
    keep_gunicorns_apart()
    build_repository(tmp_path / "models")
    ports = [reserved_port() for _ in range(4)]
    with (
        fleet(tmp_path, ports, app=APP, worker_class=("gthread", "--threads", "8")) as (_, base),
        prometheus_server(
            tmp_path / "prometheus",
            targets={"fleet": ports},
            rules=rules_firing_at_once(ALERTS.read_text()),
            startup_timeout_s=STARTUP_TIMEOUT_S,
        ) as prometheus,
    ):
        log = tmp_path / "gunicorn.log"
        wait_until(
            lambda: sum(metrics_page(port) is not None for port in ports) == 2,
            "two workers exporting",
            STARTUP_TIMEOUT_S,
        )
        # warm in both workers: each answers /ready 200 (connections go to either, so ask until 6 in a row)
        streak = [0]

        def warm() -> bool:
            streak[0] = streak[0] + 1 if ready(f"{base}-/inprocserve/ready") else 0
            return streak[0] >= 6

        wait_until(warm, f"the workers warm:\n{log.read_text()[-3000:]}", STARTUP_TIMEOUT_S)
        yield base, prometheus, tmp_path / "models"


def alert(name: str, model: str, **labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"alertname": name, "inprocserve_model_name": model, **labels}.items()))


EXPECTED = {
    alert("ModelLatencyHigh", "slow"): "slow",
    alert("ModelShedding", "slow"): "slow",
    alert("ModelDeadlinesMissed", "slow"): "slow",
    alert("ModelErrorRateHigh", "broken"): "broken",
    alert("ModelLoadFailed", "released"): "released",
    alert("CanaryWorseThanStable", "cand"): "cand",
    alert("ShadowDisagrees", "shadowed", inprocserve_shadow_version="2"): "shadowed",
    alert("ModelInputDrift", "drifting", inprocserve_model_version="1"): "drifting",
}
# the canary's failures are server errors of its model too
ALSO_FIRING = {alert("ModelErrorRateHigh", "cand")}


def traffic(base: str, models: set[str]) -> list[tuple[str, int]]:
    """One round of requests, at once: the healthy model's every round, the others' while their alerts wait."""
    calls: list[tuple[str, dict[str, Any], dict[str, str]]] = []
    calls += [("mlp", x(1), {})] * 4 + [("mlp", x(1, 5), {})]  # a caller's mistake (400) now and then
    if "slow" in models:
        slow = {**x(SLOW_ROWS, SLOW_WIDTH), "index": {"shape": [SLOW_ROWS], "dtype": "int64", "loc": 1}}
        calls += [("slow", slow, {})] * 6 + [("slow", slow, {"X-Request-Timeout-Ms": "100"})] * 2
    if "broken" in models:
        calls += [("broken", x(1), {})] * 3
    if "cand" in models:
        calls += [("cand", x(1), {"X-User-Id": f"user-{user}"}) for user in range(16)]
    if "released" in models:
        calls += [("released", x(1), {})] * 2  # version 1 answers them all along
    if "shadowed" in models:
        calls += [("shadowed", x(1), {})] * 4
    if "drifting" in models:
        calls += [("drifting", x(200, loc=10.0), {})] * 2  # far from the reference's N(0, 1)
        calls += [("steady", x(200), {})] * 2
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(lambda call: post(base, *call), calls))
    return [(call[0], status) for call, status in zip(calls, statuses, strict=True)]


def test_the_rules_copy_differs_from_the_shipped_rules_in_their_for_alone() -> None:
    shipped = _rules(ALERTS.read_text())
    copied = _rules(rules_firing_at_once(ALERTS.read_text()))
    assert list(copied) == list(shipped)
    for name, rule in shipped.items():
        assert copied[name]["expr"] == rule["expr"], name  # byte for byte
        assert copied[name] == {**rule, "for": "0s"}, name


@pytest.mark.timeout(4 * STARTUP_TIMEOUT_S + 2 * FIRING_TIMEOUT_S)  # (past every bounded wait: their messages say more)
def test_every_shipped_alert_fires_from_a_real_fleet(fleet_and_prometheus: tuple[str, Prometheus, Path]) -> None:
    base, prometheus, repository = fleet_and_prometheus
    assert {dict(labels)["alertname"] for labels in EXPECTED} == set(_rules(ALERTS.read_text()))
    loaded = prometheus.get("/api/v1/rules")["groups"]
    assert all(rule["health"] != "err" for group in loaded for rule in group["rules"]), loaded

    release_corrupt_version(repository)
    waiting = set(EXPECTED)
    seen: dict[str, list[int]] = {}
    deadline = time.monotonic() + FIRING_TIMEOUT_S
    firing: set[tuple[tuple[str, str], ...]] = set()
    while waiting:
        for model, status in traffic(base, {EXPECTED[labels] for labels in waiting}):
            seen.setdefault(model, []).append(status)
        firing = prometheus.firing()
        waiting -= firing
        if waiting and time.monotonic() > deadline:
            statuses = {model: sorted(set(codes)) for model, codes in seen.items()}
            raise AssertionError(
                f"not firing after {FIRING_TIMEOUT_S:.0f}s: {sorted(waiting)}\nfiring: {sorted(firing)}\n"
                f"answers: {statuses}\n{prometheus.log.read_text()[-2000:]}"
            )
    # what each model's callers got: the conditions were made by real answers
    assert set(seen["slow"]) >= {200, 503, 504}, seen["slow"]
    assert set(seen["broken"]) == {500}, seen["broken"]
    assert set(seen["cand"]) == {200, 500}, seen["cand"]
    assert set(seen["mlp"]) == {200, 400}, seen["mlp"]
    assert set(seen["released"]) == {200}, seen["released"]

    # The converse. The figures of the healthy parts are in Prometheus: a drift window scored on traffic drawn
    # as the reference was, the shadow version that answers as stable compared. Each is sent traffic while its
    # figure is missing: ShadowDisagrees may fire from version 2's comparisons before any copy went to version 3
    # (copies are dropped over the shadow budget or with no spare capacity, docs/rollouts.md), and the loop
    # above sends "shadowed" no more requests once it fired.
    def healthy_figures() -> bool:
        missing = set()
        if not prometheus.query('inprocserve_drift_psi{inprocserve_model_name="steady"}'):
            missing.add("drifting")
        if not prometheus.query('inprocserve_shadow_comparisons_total{inprocserve_shadow_version="3"}'):
            missing.add("shadowed")
        if missing:
            traffic(base, missing)
        return not missing

    wait_until(
        healthy_figures,
        "the healthy parts' figures in Prometheus: steady's drift PSI and shadow version 3's comparisons",
        FIRING_TIMEOUT_S,
    )
    # No rule's condition holds for them (what an evaluation of a rule with for: 0s fires on): not for the
    # healthy model, whose callers sent bad requests (400s) in every round, nor for the steady traffic's drift
    # or the agreeing shadow version.
    for name, rule in _rules(ALERTS.read_text()).items():
        for series in prometheus.query(rule["expr"]):
            labels = series["metric"]
            assert labels["inprocserve_model_name"] not in {"mlp", "steady"}, (name, series)
            assert labels.get("inprocserve_shadow_version") != "3", (name, series)
    # Nor does an alert fire that no condition was made for (shed and late requests are no server errors, say).
    firing = prometheus.firing()
    assert not [labels for labels in firing if ("inprocserve_model_name", "mlp") in labels], firing
    assert firing <= set(EXPECTED) | ALSO_FIRING, firing - set(EXPECTED) - ALSO_FIRING
