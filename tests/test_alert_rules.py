"""The shipped Prometheus alert rules: valid, unit-tested with promtool, and naming only metrics and labels
that the OpenTelemetry Prometheus exporter really writes for the library's instruments."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from inprocserve._telemetry import OUTCOMES, Metrics

RULES_DIR = Path(__file__).resolve().parent.parent / "docs" / "observability"
RULES = RULES_DIR / "alerts.yml"
RULE_TESTS = RULES_DIR / "alerts.test.yml"
SCRAPE_CONFIG = RULES_DIR / "prometheus.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found: it comes with Debian's prometheus package (`make system-deps` installs it)")
    return path


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_checks_the_rules(promtool: str) -> None:
    result = _run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_checks_the_scrape_config_and_the_rules_it_names(promtool: str) -> None:
    """An operator checks the shipped prometheus.yml where it is, outside the container it is mounted in."""
    result = _run(promtool, "check", "config", str(SCRAPE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass(promtool: str) -> None:
    result = _run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_every_alert_has_a_unit_test_where_it_fires() -> None:
    document = yaml.safe_load(RULE_TESTS.read_text())
    firing = {
        case["alertname"]
        for test in document["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {rule["alert"] for rule in _rules()} <= firing


def _exposition() -> str:
    """The text Prometheus scrapes when each of the library's instruments holds one value, with the
    attribute keys the library records (exported through a private registry, not the process's)."""
    registry = CollectorRegistry()
    try:
        reader = PrometheusMetricReader(registry=registry)
    except TypeError:  # the oldest exporter the prometheus extra allows has no registry= (make oldest)
        registry = REGISTRY  # its shutdown below takes its collector out again
        reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        instruments = Metrics(meter=provider.get_meter("inprocserve"))
        model = {"inprocserve.model.name": "m", "inprocserve.model.version": 1}
        for outcome in OUTCOMES:
            attributes = {**model, "inprocserve.rollout.variant": "stable", "inprocserve.outcome": outcome}
            instruments.request_duration.record(0.01, attributes)
        instruments.batch_queue_wait.record(0.001, model)
        instruments.batch_size.record(4, model)
        instruments.batch_duration.record(0.002, model)
        instruments.shed.add(1, model)
        instruments.deadlines.add(1, model)
        instruments.lifecycle.add(1, {"inprocserve.model.name": "m", "inprocserve.model.event": "failed"})
        shadow = {"inprocserve.model.name": "m", "inprocserve.shadow.version": 2}
        instruments.shadow.add(1, {**shadow, "inprocserve.shadow.result": "agree"})
        instruments.shadow_diff.record(0.0, shadow)
        instruments.add_source(
            lambda: [
                ("psi", 0.1, {**model, "inprocserve.drift.feature": "x[0]"}),
                ("ks", 0.1, {**model, "inprocserve.drift.feature": "x[0]"}),
                ("memory", 1.0, model),
                ("queue", 0.0, model),
                ("in_flight", 0.0, model),
                ("failed_versions", 1.0, {"inprocserve.model.name": "m"}),
            ]
        )
        return generate_latest(registry).decode()
    finally:
        provider.shutdown()


def test_rules_name_only_metrics_and_labels_the_exporter_writes() -> None:
    exposition = _exposition()
    samples = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", exposition, flags=re.MULTILINE))
    labels = set(re.findall(r"[{,]([a-zA-Z_][a-zA-Z0-9_]*)=", exposition))
    assert "inprocserve_request_duration_seconds_bucket" in samples  # the unit suffix the rules rely on
    for rule in _rules():
        for name in re.findall(r"\binprocserve_[a-z_]+", rule["expr"] + str(rule.get("annotations", {}))):
            assert name in samples or name in labels, f"{rule['alert']} names {name}, which is not exported"
    for outcome in re.findall(r'inprocserve_outcome[!=~]+"([^"]+)"', RULES.read_text()):
        assert set(outcome.split("|")) <= set(OUTCOMES), outcome
