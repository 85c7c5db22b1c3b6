"""Run by the spent-budget metrics test in a fresh interpreter (a meter provider is set once per process):
requests to the sync and async views with a spent budget, then the metric points, as JSON."""

from __future__ import annotations

import json
import sys

import django
from django.conf import settings
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
settings.configure(
    **{
        name: getattr(__import__("testproject_settings"), name)
        for name in ("SECRET_KEY", "INSTALLED_APPS", "MIDDLEWARE", "ROOT_URLCONF", "DATABASES", "USE_TZ")
    },
    INPROCSERVE={"REPOSITORY": sys.argv[1]},
)
django.setup()
from django.test import Client  # noqa: E402

answers = [
    Client().post(path, b'{"rows": [[1, 2, 3, 4]]}', "application/json", headers=headers).status_code
    for path in ("/score", "/ascore")
    for headers in ({}, {"X-Request-Timeout-Ms": "0"})
]
points: dict[str, dict[str, float]] = {}
for resource in reader.get_metrics_data().resource_metrics:
    for scope in resource.scope_metrics:
        for metric in scope.metrics:
            for point in metric.data.data_points:
                outcome = str(point.attributes.get("inprocserve.outcome", ""))
                value = getattr(point, "count", None) or getattr(point, "value", 0)
                by_outcome = points.setdefault(metric.name, {})
                by_outcome[outcome] = by_outcome.get(outcome, 0) + value
print(json.dumps({"answers": answers, "points": points}))
