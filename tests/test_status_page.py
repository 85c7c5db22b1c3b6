"""The status page and the latency / batch-size recorders behind it, on real servers with real models."""

from __future__ import annotations

import copy
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import inprocserve
from inprocserve._stats import BatchSizeHistogram, LatencyHistogram, latency_bounds_s
from inprocserve.testing import build_gather_model, build_scale_model, save_model

from .conftest import ServerFactory, run_threads, wait_until

HOSTILE = '<img src=x onerror="alert(1)">&<script>alert(2)</script>'


class _Elements(HTMLParser):
    """Every element and attribute of a page, to check what a browser would actually build from it."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.extend(name for name, _ in attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Elements:
    elements = _Elements()
    elements.feed(page)
    elements.close()
    return elements


def assert_inert(page: str) -> None:
    """Nothing that runs or loads: no script, no image or frame element, no event handler attribute."""
    elements = parse(page)
    assert not {"script", "img", "iframe", "object", "embed", "link", "base", "form"} & set(elements.tags)
    assert not [name for name in elements.attributes if name.startswith("on")]


@pytest.fixture
def rollout_server(repository: Path, make_server: ServerFactory) -> inprocserve.Server:
    """``fraud`` with a canary, a shadow and drift monitoring; ``ranker`` with a two-arm A/B test."""
    for version, factor in ((1, 2.0), (2, 2.0), (3, 2.5)):
        save_model(build_scale_model(factor), repository, "fraud", version)
        save_model(build_scale_model(factor), repository, "ranker", version)
    rollout = inprocserve.RolloutConfig
    models = {
        "fraud": inprocserve.ModelConfig(
            rollout=rollout(
                strategy="canary",
                stable=1,
                canary=inprocserve.CanaryConfig(version=2, percent=30),
                shadow=inprocserve.ShadowConfig(versions=(3,)),
            ),
            drift=inprocserve.DriftConfig(capture_reference=40, window=40),
        ),
        "ranker": inprocserve.ModelConfig(
            rollout=rollout(
                strategy="ab",
                variants={"control": {"version": 1, "weight": 50}, "bigger": {"version": 3, "weight": 50}},
            )
        ),
    }
    server = make_server(repository, models=models)
    rng = np.random.default_rng(0)
    for user in range(120):
        rows = rng.normal(size=(1 + user % 3, 4)).astype(np.float32)
        server.predict("fraud", rows, context={"user_id": str(user)})
        result = server.predict("ranker", rows, context={"user_id": str(user)})
        server.record_outcome(result.request_id, float(result.variant == "bigger" or user % 4 == 0), model="ranker")

    def drift_scored() -> bool:
        if server.status()["models"]["fraud"]["versions"]["1"]["drift"]["windows"] > 0:
            return True
        # The reference is built on the drift thread, which skips what arrives meanwhile: on a fast machine
        # the loop above can end before a first window fills, so keep feeding version 1 until one is scored.
        server.predict("fraud", rng.normal(size=(4, 4)).astype(np.float32), version=1)
        return False

    wait_until(drift_scored)
    return server


# -- the recorders ----------------------------------------------------------------------------------------


def test_latency_percentiles_match_the_exact_ones_within_a_bucket() -> None:
    histogram = LatencyHistogram()
    samples = np.random.default_rng(1).lognormal(mean=np.log(0.002), sigma=0.8, size=5000)
    for seconds in samples:
        histogram.record(float(seconds))
    snapshot = histogram.snapshot()
    assert snapshot["count"] == 5000 and snapshot["errors"] == 0
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        exact_ms = float(np.percentile(samples, q)) * 1000
        assert snapshot[name] == pytest.approx(exact_ms, rel=0.1), name  # buckets are 2 ** (1/8) wide
    assert sum(count for _, _, count in snapshot["histogram"]) == 5000
    lowers = [lower for lower, _, _ in snapshot["histogram"]]
    assert lowers == sorted(lowers)


def test_failed_requests_are_counted_apart_and_extremes_land_in_the_end_buckets() -> None:
    histogram = LatencyHistogram()
    assert histogram.snapshot() == {"count": 0, "errors": 0, "p50": None, "p90": None, "p99": None, "histogram": []}
    histogram.record(0.0)  # faster than the first bound
    histogram.record(1e6)  # slower than the last: the overflow bucket
    histogram.record(0.001, failed=True)
    snapshot = histogram.snapshot()
    assert (snapshot["count"], snapshot["errors"]) == (2, 1)
    assert snapshot["histogram"][0][:2] == [0.0, round(latency_bounds_s()[0] * 1000, 4)]
    assert snapshot["histogram"][-1][1] is None
    assert snapshot["p99"] == round(latency_bounds_s()[-1] * 1000, 4)


def test_batch_sizes_fall_in_power_of_two_buckets_up_to_the_batch_limit() -> None:
    histogram = BatchSizeHistogram()
    for rows in (1, 1, 2, 3, 4, 5, 8, 9):
        histogram.record(rows)
    snapshot = histogram.snapshot(max_rows=32)
    assert snapshot == {
        "batches": 8,
        "rows": 33,
        "histogram": {"1": 2, "2": 1, "3-4": 2, "5-8": 2, "9-16": 1, "17-32": 0},
    }
    histogram.record(10**6)  # a request larger than any bucket: counted in the last one
    assert list(histogram.snapshot()["histogram"].items())[-1] == (">32768", 1)


def test_status_reports_latency_and_batch_sizes_of_every_path(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(scale_repository)
    rows = np.ones((3, 4), dtype=np.float32)
    for _ in range(5):
        server.predict("scale", rows)
    futures = [server.submit("scale", rows) for _ in range(20)]
    for future in futures:
        future.result(timeout=30)
    assert not run_threads(8, lambda _: [server.predict("scale", rows) for _ in range(10)])
    entry = server.status()["models"]["scale"]["versions"]["1"]
    assert entry["latency_ms"]["count"] == 5 + 20 + 80
    assert entry["latency_ms"]["errors"] == 0
    assert 0 < entry["latency_ms"]["p50"] <= entry["latency_ms"]["p90"] <= entry["latency_ms"]["p99"]
    sizes = entry["batch_size"]
    assert sizes["batches"] == entry["batches_run"]
    assert sum(sizes["histogram"].values()) == entry["batches_run"]
    assert "33-64" in sizes["histogram"]  # the empty buckets up to max_batch_size show it never filled
    json.dumps(server.status())  # still JSON-ready


def test_a_request_that_fails_in_onnxruntime_counts_as_an_error(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_gather_model(table_rows=10), repository, "gather", 1)
    server = make_server(repository)
    server.predict("gather", {"index": np.array([1, 2], dtype=np.int64)})
    with pytest.raises(inprocserve.InferenceError):
        server.predict("gather", {"index": np.array([99], dtype=np.int64)})
    latency = server.status()["models"]["gather"]["versions"]["1"]["latency_ms"]
    assert (latency["count"], latency["errors"]) == (1, 1)


# -- the page -----------------------------------------------------------------------------------------------


def test_the_page_shows_every_model_version_and_statistic(rollout_server: inprocserve.Server) -> None:
    status = rollout_server.status()
    page = inprocserve.render_status_page(status, title="fleet A")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert_inert(page)
    text = " ".join(parse(page).text)
    assert "fleet A" in text
    for name in ("fraud", "ranker"):
        assert f'id="model-{name}"' in page
    assert "Canary: 30 % of targeting keys go to version 2" in text
    assert "A/B test, sticky per targeting key" in text
    assert "Traffic per variant" in text and "Outcomes against the control, control" in text
    assert "two-proportion z" in text  # the A/B test's statistic, with its verdict next to it
    assert "Shadow agreement" in text
    assert "PSI per feature" in text and "threshold 0.2" in text
    fraud_v1 = status["models"]["fraud"]["versions"]["1"]["latency_ms"]
    assert f"{fraud_v1['p99']:.3g} ms" in text
    assert page.count("<svg") >= 8  # shares, agreement, drift, latency and batch charts
    json_round_trip = json.loads(json.dumps(status))
    assert inprocserve.render_status_page(json_round_trip, now=None).count("<svg") == page.count("<svg")


def test_the_page_says_which_worker_drew_it(rollout_server: inprocserve.Server) -> None:
    # under several workers each load is one worker's figures, whichever took the connection (the gunicorn
    # test in test_gunicorn_metrics.py shows it across two real workers)
    status = rollout_server.status()
    header = inprocserve.render_status_page(status).split("<header>", 1)[1].split("</header>", 1)[0]
    worker = status["worker"]
    assert f"worker {worker['pid']} on {worker['hostname']} (its own figures)" in header
    hostile = {**status, "worker": {"pid": "<script>", "hostname": None}}
    header = inprocserve.render_status_page(hostile).split("<header>", 1)[1].split("</header>", 1)[0]
    assert "worker &lt;script&gt; (its own figures)" in header  # (escaped, and no host said when none is known)
    assert "worker" not in inprocserve.render_status_page({**status, "worker": None}).split("</header>", 1)[0]


def test_a_bandit_shows_its_arm_shares(repository: Path, make_server: ServerFactory) -> None:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "bandit", version)
    arms = {"left": {"version": 1}, "right": {"version": 2}}
    config = inprocserve.ModelConfig(rollout=inprocserve.RolloutConfig(strategy="bandit", variants=arms, seed=7))
    server = make_server(repository, models={"bandit": config})
    for _ in range(60):
        result = server.predict("bandit", np.ones((1, 4), dtype=np.float32))
        server.record_outcome(result.request_id, float(result.variant == "right"), model="bandit")
    page = inprocserve.render_status_page(server.status())
    text = " ".join(parse(page).text)
    assert "Bandit arm shares" in text and "Bandit (thompson)" in text
    served = server.status()["models"]["bandit"]["rollout"]["variants"]
    share = served["right"]["served"] / (served["left"]["served"] + served["right"]["served"])
    assert f"{share * 100:.1f} %" in text


def test_a_failed_version_shows_its_error(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0), repository, "fraud", 1)
    broken = repository / "fraud" / "2" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not an onnx model")
    page = inprocserve.render_status_page(make_server(repository).status())
    text = " ".join(parse(page).text)
    assert "failed" in text
    error = make_server(repository).status()["models"]["fraud"]["versions"]["2"]["error"]
    assert error and error in text


def test_hostile_names_from_a_real_model_are_escaped(repository: Path, make_server: ServerFactory) -> None:
    """An ONNX input may be named anything; its name reaches the page through the drift features."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [HOSTILE], ["y"])],
        "hostile",
        [helper.make_tensor_value_info(HOSTILE, TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    save_model(model, repository, "echo", 1)
    drift = inprocserve.DriftConfig(capture_reference=10, window=10)
    server = make_server(repository, models={"echo": inprocserve.ModelConfig(drift=drift)})
    rows = {HOSTILE: np.random.default_rng(0).normal(size=(2, 2)).astype(np.float32)}
    for _ in range(5):  # the reference
        server.predict("echo", rows)
    wait_until(lambda: server.status()["models"]["echo"]["versions"]["1"]["drift"]["reference_ready"])
    for _ in range(5):  # a window
        server.predict("echo", rows)
    wait_until(lambda: bool(server.status()["models"]["echo"]["versions"]["1"]["drift"]["features"]))
    status = server.status()
    features = status["models"]["echo"]["versions"]["1"]["drift"]["features"]
    assert any(HOSTILE in name for name in features)
    page = inprocserve.render_status_page(status)
    assert_inert(page)
    assert "<script>" not in page and "<img" not in page
    assert "&lt;img src=x" in page


def test_hostile_values_anywhere_in_the_status_are_escaped(rollout_server: inprocserve.Server) -> None:
    status = copy.deepcopy(rollout_server.status())
    fraud = status["models"]["fraud"]
    fraud["config_error"] = HOSTILE
    fraud["versions"]["1"]["error"] = HOSTILE
    fraud["versions"]["1"]["state"] = HOSTILE
    fraud["versions"]["1"]["providers"] = [HOSTILE]
    fraud["rollout"]["variants"][HOSTILE] = {"served": 5, "outcomes": 1, "mean_reward": 1.0}
    fraud["rollout"]["tests"][HOSTILE] = {"difference": 0.1, "test": HOSTILE, "p_value": 0.01, "reliable": True}
    fraud["rollout"]["flags"] = {"provider": HOSTILE, "failures": 0, "timeouts": 0}
    fraud["rollout"]["configured"]["candidate"] = HOSTILE
    fraud["shadow"][HOSTILE] = {"runs": 1, "label_agreement": 0.5}
    fraud["versions"]["1"]["drift"]["features"][HOSTILE] = {"psi": 0.5}
    status["models"][HOSTILE] = copy.deepcopy(fraud)
    status["repository"] = HOSTILE
    page = inprocserve.render_status_page(status, title=HOSTILE)
    assert_inert(page)
    assert "<script>" not in page and "<img" not in page
    assert page.count("&lt;script&gt;") >= 10


def test_values_of_the_wrong_type_do_not_break_the_page(rollout_server: inprocserve.Server) -> None:
    status = copy.deepcopy(rollout_server.status())
    fraud = status["models"]["fraud"]
    fraud["versions"]["1"]["latency_ms"] = {"count": 3, "p50": float("nan"), "histogram": [[0.1, 0.2, 3]]}
    fraud["versions"]["1"]["drift"]["features"]["x[0]"] = {"psi": float("inf")}
    fraud["versions"]["1"]["drift"]["psi_threshold"] = None
    fraud["rollout"]["tests"]["canary"] = {"p_value": None}
    fraud["versions"]["2"] = "not a mapping"
    page = inprocserve.render_status_page(status)
    assert "nan" not in page.lower().replace("nano", "") and 'inf"' not in page
    assert_inert(page)


def test_an_empty_server_and_bad_arguments(make_server: ServerFactory) -> None:
    page = inprocserve.render_status_page(make_server().status())
    assert "No model is loaded." in page
    with pytest.raises(TypeError, match=r"Server\.status"):
        inprocserve.render_status_page({"closed": False})
    with pytest.raises(TypeError, match=r"Server\.status"):
        inprocserve.render_status_page("<html>")  # type: ignore[arg-type]


def test_the_page_needs_nothing_beyond_its_content_security_policy(rollout_server: inprocserve.Server) -> None:
    page = inprocserve.render_status_page(rollout_server.status())
    assert "default-src 'none'" in inprocserve.STATUS_PAGE_CSP
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "url(" not in page


def _status_with(**versions: Any) -> dict[str, Any]:
    return {"models": {"m": {"ready": True, "default_version": 1, "versions": versions}}}


def test_a_significant_result_needs_enough_outcomes() -> None:
    rollout = {
        "strategy": "ab",
        "variants": {"a": {"served": 100}, "b": {"served": 100}, "c": {"served": 10}},
        "tests": {
            "b": {
                "difference": 0.2,
                "test": "two-proportion z",
                "p_value": 0.001,
                "reliable": True,
                "always_valid_p_value": 0.02,
            },
            "c": {"difference": 0.3, "test": "two-proportion z", "p_value": 0.01, "reliable": False},
        },
        "configured": {"arms": {"a": {"version": 1, "weight": 1}, "b": {"version": 1, "weight": 1}}},
    }
    status = _status_with(**{"1": {"state": "ready"}})
    status["models"]["m"]["rollout"] = rollout
    text = " ".join(parse(inprocserve.render_status_page(status)).text)
    assert "significant (always-valid p < 0.05)" in text
    assert "p < 0.05 but under 30 outcomes a side" in text


def test_the_verdict_of_a_watched_test_reads_the_always_valid_p_value() -> None:
    """A page is watched while a test runs: a fixed-horizon p < 0.05 alone is no verdict to act on."""
    tests = {
        "b": {
            "difference": 0.01,
            "test": "two-proportion z",
            "p_value": 0.01,
            "reliable": True,
            "always_valid_p_value": 0.4,
        },
    }
    rollout = {"strategy": "ab", "variants": {"a": {"served": 900}, "b": {"served": 900}}, "tests": tests}
    status = _status_with(**{"1": {"state": "ready"}})
    status["models"]["m"]["rollout"] = rollout
    page = inprocserve.render_status_page(status)
    row = page[page.index("<td>b</td>") :].split("</tr>")[0]
    text = " ".join(parse(row).text)
    assert "not yet: only the fixed-horizon p < 0.05" in text and "0.400" in text
    assert "significant (" not in text


def test_a_shadow_answering_nan_shows_an_infinite_difference(rollout_server: inprocserve.Server) -> None:
    status = copy.deepcopy(rollout_server.status())
    status["models"]["fraud"]["shadow"] = {
        "3": {"runs": 50, "errors": 0, "non_finite_diffs": 50, "stopped_over_budget": 2, "max_abs_diff": None}
    }
    page = inprocserve.render_status_page(status)
    row = page[page.index("<td>v3</td>") :].split("</tr>")[0]
    assert "<td class='n'>inf</td>" in row and "<td class='n'>50</td>" in row and "<td class='n'>2</td>" in row


def test_a_shadow_answering_in_another_form_is_counted_on_the_page(rollout_server: inprocserve.Server) -> None:
    status = copy.deepcopy(rollout_server.status())
    status["models"]["fraud"]["shadow"] = {"3": {"runs": 9, "errors": 0, "mismatched": 7, "max_abs_diff": None}}
    page = inprocserve.render_status_page(status)
    assert "<th>answered in another form</th>" in page
    row = page[page.index("<td>v3</td>") :].split("</tr>")[0]
    assert row.endswith("<td class='n'>7</td>")


def test_the_kill_switch_shows_the_stable_version_answering_everything(
    rollout_server: inprocserve.Server,
) -> None:
    # The page kept saying "Canary: 30 % of targeting keys go to version 2" (and badged v2 "canary 30%")
    # after the fleet's kill switch sent every request to the stable version: what an operator reads in an
    # incident must say the kill switch is on.
    before = " ".join(parse(inprocserve.render_status_page(rollout_server.status())).text)
    assert "Canary: 30 % of targeting keys go to version 2" in before and "the the" not in before
    rollout_server.kill("fraud")
    answered = {
        rollout_server.predict("fraud", np.ones((1, 4), np.float32), context={"user_id": str(u)}).version
        for u in range(60)
    }
    page = inprocserve.render_status_page(rollout_server.status())
    assert_inert(page)
    text = " ".join(parse(page).text)
    assert answered == {1}
    assert "kill switch on" in text and "Canary: 30 %" not in text and "canary 30%" not in text
    assert "Kill switch on (control file): the stable alias version 1 answers every request" in text
    rollout_server.resume("fraud")
    assert "Canary: 30 % of targeting keys go to version 2" in " ".join(
        parse(inprocserve.render_status_page(rollout_server.status())).text
    )


def test_a_canary_without_a_stable_alias_reads_as_one_sentence(repository: Path, make_server: ServerFactory) -> None:
    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "fraud", version)
    canary = inprocserve.RolloutConfig(strategy="canary", canary=inprocserve.CanaryConfig(version=2, percent=10))
    server = make_server(repository, models={"fraud": inprocserve.ModelConfig(rollout=canary)})
    text = " ".join(parse(inprocserve.render_status_page(server.status())).text)
    assert "the rest to the latest ready version (3)." in text, text  # was "to the the latest"


def test_a_control_file_canary_says_it_replaces_the_configured_a_b_test(
    repository: Path, make_server: ServerFactory
) -> None:
    # `canary models/ fraud 1 0` on an A/B model: everyone gets the stable version and the arms are off. The
    # CLI's status said so; the page read as an ordinary 0 % canary, naming neither the control file nor the
    # A/B test it replaced.
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "fraud", version)
    ab = inprocserve.RolloutConfig(strategy="ab", stable=1, variants={"a": {"version": 1}, "b": {"version": 2}})
    server = make_server(repository, models={"fraud": inprocserve.ModelConfig(rollout=ab)})
    assert "Set by the control file" not in " ".join(parse(inprocserve.render_status_page(server.status())).text)
    server.set_canary("fraud", 1, percent=0)
    page = inprocserve.render_status_page(server.status())
    assert_inert(page)
    text = " ".join(parse(page).text)
    assert "Canary: 0 % of targeting keys go to version 1" in text, text
    assert "Set by the control file: it replaces the configured rollout (an A/B test's arms too)" in text, text
    server.resume_configured_canary("fraud")
    text = " ".join(parse(inprocserve.render_status_page(server.status())).text)
    assert "A/B test" in text and "Set by the control file" not in text, text


def test_a_control_file_problem_shows_and_a_refusing_worker_is_not_shown_ready(
    repository: Path, make_server: ServerFactory
) -> None:
    # A worker started on an unreadable control file refuses every request that pins no version; its page
    # said each model was "ready" and which version "answers every request", and never named the file.
    save_model(build_scale_model(2.0), repository, "fraud", 1)
    control = repository / ".inprocserve-control.json"
    control.write_text("{ not json")
    server = make_server(repository, control_interval_s=0.05)
    with pytest.raises(inprocserve.ControlStateUnknownError):
        server.predict("fraud", np.ones((1, 4), np.float32))
    page = inprocserve.render_status_page(server.status(include_paths=False))
    assert_inert(page)
    text = " ".join(parse(page).text)
    assert "Refusing every request that does not pin a version" in text and "is not valid JSON" in text
    assert "refusing requests (control file)" in text and "not ready" in text
    assert str(repository) not in page

    control.unlink()  # no file: no fleet state, the worker routes again
    wait_until(lambda: server.status()["control"]["read"])
    text = " ".join(parse(inprocserve.render_status_page(server.status())).text)
    assert "Refusing" not in text and "refusing requests" not in text and "Control file:" not in text
    server.kill("fraud")
    control.write_text("{ not json")  # damaged later: the last revision stays in force, and the page says why
    wait_until(lambda: server.status()["control"]["error"] is not None)
    text = " ".join(parse(inprocserve.render_status_page(server.status(include_paths=False))).text)
    assert "Control file: control file <path> is not valid JSON" in text and "Refusing" not in text
    assert "kill switch on" in text


def test_new_files_that_fail_to_load_show_beside_the_version_still_serving(
    repository: Path, make_server: ServerFactory
) -> None:
    # A hot reload whose new model.onnx is broken keeps the version loaded before (reload_error in status);
    # the page showed it "ready" and said nothing, so the broken deploy went unnoticed there.
    save_model(build_scale_model(2.0), repository, "fraud", 1)
    server = make_server(repository, control_interval_s=None)
    (repository / "fraud" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    server.refresh()
    entry = server.status(include_paths=False)["models"]["fraud"]["versions"]["1"]
    assert entry["state"] == "ready" and entry["reload_error"]
    text = " ".join(parse(inprocserve.render_status_page(server.status(include_paths=False))).text)
    assert "new files failed" in text
    assert f"Its new files failed to load; the version loaded before serves: {entry['reload_error']}" in text
