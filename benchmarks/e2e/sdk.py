"""The OpenTelemetry SDK of ``http_e2e.py --otel``, shared by the Flask and Django apps: installed when the
app module is imported, as a service installs it, and reported by ``GET /sdk`` so that the harness can
check that every server it measures runs with it."""

from __future__ import annotations

import json
import os


def install_if_asked() -> None:
    """Install the SDK (``telemetry_overhead.install_sdk("sampled")``) when ``E2E_OTEL`` is ``1``."""
    if os.environ.get("E2E_OTEL") == "1":
        from telemetry_overhead import install_sdk

        install_sdk("sampled")


def providers() -> str:
    """JSON naming this process's tracer and meter providers (the API's no-op/proxy ones without an SDK),
    with its pid: each worker process answers for itself."""
    from opentelemetry import metrics, trace

    tracer, meter = trace.get_tracer_provider(), metrics.get_meter_provider()
    return json.dumps(
        {
            "pid": os.getpid(),
            "tracer": f"{type(tracer).__module__}.{type(tracer).__qualname__}",
            "meter": f"{type(meter).__module__}.{type(meter).__qualname__}",
        }
    )
