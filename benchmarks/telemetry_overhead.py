"""Cost of telemetry: the coalescing load with the OpenTelemetry SDK installed (every span recorded and
exported by a batch processor, every metric aggregated) against the same load with no SDK.

An SDK can be installed only once per process, so each measurement runs in a child process; the two
modes alternate (off, on, off, on ...) so machine drift hits both alike. Writes
benchmarks/results/telemetry_overhead.{json,md}.

    python benchmarks/telemetry_overhead.py [--rounds 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import RESULTS, build_reference, closed_loop, input_rows, machine

import inprocserve

CHILD = "child"


def child(mode: str, model: str, clients: int, seconds: float) -> None:
    if mode in ("on", "sampled"):
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        class Discard(SpanExporter):  # export cost is the backend's; this measures the library and the SDK
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        # "sampled": 1 % of traces recorded, as a busy service would run; metrics are always complete
        provider = (
            TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01))) if mode == "sampled" else TracerProvider()
        )
        provider.add_span_processor(BatchSpanProcessor(Discard()))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    with tempfile.TemporaryDirectory() as folder:
        build_reference(model, Path(folder))
        with inprocserve.Server(folder) as server:
            rows = input_rows(model, clients)
            closed_loop("warm", model, clients, lambda x: server.predict(model, {"x": x}), rows, 0.5)
            result = closed_loop(mode, model, clients, lambda x: server.predict(model, {"x": x}), rows, seconds)
    print(json.dumps(vars(result)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--points", default="mlp-small:1,mlp-small:64,mlp-large:64")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "settings": vars(args).copy(), "points": {}}
    for point in args.points.split(","):
        model, clients = point.split(":")
        runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": [], "sampled": []}
        for _ in range(args.rounds):
            for mode in ("off", "on", "sampled"):
                out = subprocess.run(
                    [sys.executable, __file__, CHILD, mode, model, clients, str(args.seconds)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                runs[mode].append(json.loads(out.strip().splitlines()[-1]))
        off = statistics.median(r["throughput"] for r in runs["off"])
        on = statistics.median(r["throughput"] for r in runs["on"])
        sampled = statistics.median(r["throughput"] for r in runs["sampled"])
        summary = {
            "off_rps": off,
            "on_rps": on,
            "sampled_rps": sampled,
            "ratio": on / off,
            "sampled_ratio": sampled / off,
            "off_p50_ms": statistics.median(r["p50_ms"] for r in runs["off"]),
            "on_p50_ms": statistics.median(r["p50_ms"] for r in runs["on"]),
            "sampled_p50_ms": statistics.median(r["p50_ms"] for r in runs["sampled"]),
        }
        results["points"][point] = {"runs": runs, "summary": summary}
        print(
            f"{point}: no SDK {off:,.0f} req/s, SDK {on:,.0f} req/s, ratio {on / off:.2f}, "
            f"p50 {summary['off_p50_ms']:.3f} -> {summary['on_p50_ms']:.3f} ms"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "telemetry_overhead.json").write_text(json.dumps(results, indent=2))
    m = results["machine"]
    lines = [
        "# Telemetry overhead",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, onnxruntime {m['onnxruntime']}, {m['date']}.",
        f"{args.rounds} rounds of {args.seconds} s per mode, alternating child processes; medians.",
        "",
        "| model:clients | no SDK req/s | SDK, every span req/s (ratio) | SDK, 1 % of traces req/s (ratio) "
        "| p50 ms (none / every / 1 %) |",
        "|---|---:|---:|---:|---:|",
    ]
    for point, data in results["points"].items():
        s = data["summary"]
        lines.append(
            f"| {point} | {s['off_rps']:,.0f} | {s['on_rps']:,.0f} ({s['ratio']:.2f}) | "
            f"{s['sampled_rps']:,.0f} ({s['sampled_ratio']:.2f}) | "
            f"{s['off_p50_ms']:.3f} / {s['on_p50_ms']:.3f} / {s['sampled_p50_ms']:.3f} |"
        )
    (RESULTS / "telemetry_overhead.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'telemetry_overhead.md'}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    else:
        main()
