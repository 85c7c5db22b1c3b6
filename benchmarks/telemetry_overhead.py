"""Cost of telemetry: the closed-loop load with the OpenTelemetry SDK installed as production runs it,
against the same load with no SDK.

The SDK is configured as a service would: a ``TracerProvider`` with a ``BatchSpanProcessor`` (its exporter
discards: export cost is the backend's, this measures the library and the SDK) and a ``MeterProvider`` with
a ``PeriodicExportingMetricReader`` (every 5 s, to an exporter that discards). Modes:

* ``off``: no SDK (the library's default situation);
* ``on``: every span recorded (``ALWAYS_ON``);
* ``sampled``: ``ParentBased(TraceIdRatioBased(0.01))``, each ``predict`` a root span (1 % recorded);
* ``web``: the same sampler, each ``predict`` called inside a web request's span context, 1 in 100 of them
  sampled, as when a web framework's instrumentation (or an upstream ``traceparent``) made the request's
  span. The contexts are built before the load; attaching one per call (about a microsecond) is counted
  against this mode;
* ``traces``, ``metrics`` (not run unless named in ``--modes``): only the tracer provider (``sampled``'s
  sampler) or only the meter provider, to split the cost between them.

An SDK can be installed only once per process, so each measurement runs in a child process; the modes
alternate (off, on, sampled, web, off ...) so machine drift hits them alike. With ``--baseline DIR`` (a
folder holding another ``inprocserve`` package, e.g. ``git archive REV inprocserve | tar -x -C DIR``) every
mode also runs against that code, interleaved, for a before/after comparison in one run. With
``--sdk-python PYTHON`` (repeatable: the interpreter of a virtualenv holding another ``opentelemetry-sdk``)
every mode also runs this code under that interpreter, interleaved, its rows labelled by its SDK's version:
the SDK's own cost per record differs several-fold between releases (docs/observability.md, "Cost"). Writes
telemetry_overhead.{json,md} (telemetry_overhead-sdk.{json,md} with ``--sdk-python``) into ``--out``
(benchmarks/results by default: the figures of record, taken on a quiet machine; point it elsewhere for a
trial run).

    python benchmarks/telemetry_overhead.py [--rounds 3] [--seconds 3] [--baseline DIR] [--out DIR]
    python benchmarks/telemetry_overhead.py --points mlp-small:1 --modes off,sampled \
        --sdk-python /tmp/sdk-1.44/bin/python
    # where: python -m venv /tmp/sdk-1.44 && /tmp/sdk-1.44/bin/pip install . onnx opentelemetry-sdk==1.44.0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import RESULTS, build_reference, closed_loop, input_rows, installed_version, machine, machine_line

CHILD = "child"
MODES = ("off", "on", "sampled", "web")
EXTRA_MODES = ("traces", "metrics")  # one provider only: where the cost of "sampled" comes from
ROOT = Path(__file__).resolve().parent.parent
WEB_SAMPLED_EVERY = 100  # 1 % of web requests sampled upstream


def install_sdk(mode: str) -> None:
    """Install the SDK as ``mode`` (one of ``MODES`` or ``EXTRA_MODES``, not ``off``) says, once per process."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    class DiscardSpans(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    class DiscardMetrics(MetricExporter):
        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            pass

    if mode != "metrics":
        sampler = ALWAYS_ON if mode == "on" else ParentBased(TraceIdRatioBased(0.01))
        provider = TracerProvider(sampler=sampler)
        provider.add_span_processor(BatchSpanProcessor(DiscardSpans()))
        trace.set_tracer_provider(provider)
    if mode != "traces":
        reader = PeriodicExportingMetricReader(DiscardMetrics(), export_interval_millis=5_000)
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))


def under_web_spans(call: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``call`` run inside a web request's span context; every 100th of them sampled."""
    import itertools
    import random

    from opentelemetry import context, trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    rng = random.Random(7)
    contexts = [
        trace.set_span_in_context(
            NonRecordingSpan(
                SpanContext(
                    rng.getrandbits(128),
                    rng.getrandbits(64),
                    is_remote=True,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED if i % WEB_SAMPLED_EVERY == 0 else TraceFlags.DEFAULT),
                )
            )
        )
        for i in range(10 * WEB_SAMPLED_EVERY)
    ]
    turns = itertools.cycle(contexts)

    def wrapped(x: Any) -> Any:
        token = context.attach(next(turns))
        try:
            return call(x)
        finally:
            context.detach(token)

    return wrapped


def child(mode: str, model: str, clients: int, seconds: float) -> None:
    if mode != "off":
        install_sdk(mode)
    import inprocserve

    with tempfile.TemporaryDirectory() as folder:
        build_reference(model, Path(folder))
        with inprocserve.Server(folder) as server:
            rows = input_rows(model, clients)

            def call(x: Any) -> Any:
                return server.predict(model, {"x": x})

            if mode == "web":
                call = under_web_spans(call)
            closed_loop("warm", model, clients, call, rows, 0.5)
            cpu = time.process_time()
            result = closed_loop(mode, model, clients, call, rows, seconds)
            cpu = time.process_time() - cpu
    # CPU time of the whole process per request (every thread: callers, workers, the SDK's, onnxruntime's):
    # less sensitive than throughput to other processes on a shared machine
    cpu_us = cpu / result.requests * 1e6
    sdk = installed_version("opentelemetry-sdk")
    print(json.dumps(vars(result) | {"cpu_us": cpu_us, "inprocserve": inprocserve.__file__, "sdk": sdk}))


def sdk_of(python: str) -> str:
    """The opentelemetry-sdk version that ``python`` imports (an error if it has none: nothing to compare)."""
    found = subprocess.run(
        [python, "-c", "from importlib.metadata import version; print(version('opentelemetry-sdk'))"],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise SystemExit(f"--sdk-python {python}: it has no opentelemetry-sdk ({found.stderr.strip()[-200:]})")
    return found.stdout.strip()


def run_child(code: Path, python: str, mode: str, model: str, clients: str, seconds: float) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(code))
    out = subprocess.run(
        [python, __file__, CHILD, mode, model, clients, str(seconds)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if not result["inprocserve"].startswith(str(code)):
        raise RuntimeError(f"the child imported {result['inprocserve']}, not the code under {code}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--points", default="mlp-small:1,mlp-small:64,mlp-large:64")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--baseline", type=Path, help="a folder holding the inprocserve package to compare with")
    parser.add_argument(
        "--sdk-python",
        action="append",
        default=[],
        metavar="PYTHON",
        help="also run this code under this interpreter (a venv with another opentelemetry-sdk); repeatable",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the results")
    args = parser.parse_args()
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES) - set(EXTRA_MODES))
    if unknown or "off" not in modes:
        choices = ", ".join(MODES + EXTRA_MODES)
        parser.error(f"--modes: {', '.join(unknown) or 'off is missing'} (choose from {choices})")
    # each row of the table: a label, the code's folder and the interpreter that runs it
    trees: dict[str, tuple[Path, str]] = {"now": (ROOT, sys.executable)}
    if args.baseline is not None:
        trees = {"before": (args.baseline.resolve(), sys.executable), "now": (ROOT, sys.executable)}
    if args.sdk_python:
        trees = {f"{label}, sdk {installed_version('opentelemetry-sdk')}": tree for label, tree in trees.items()}
        for python in args.sdk_python:
            trees[f"now, sdk {sdk_of(python)}"] = (ROOT, python)
        if len(trees) < len(args.sdk_python) + (2 if args.baseline is not None else 1):
            parser.error("--sdk-python: two interpreters hold the same opentelemetry-sdk version")
    results: dict[str, Any] = {"machine": machine(), "settings": vars(args).copy(), "points": {}}
    results["settings"]["baseline"] = str(args.baseline) if args.baseline else None
    results["settings"]["out"] = str(args.out)
    results["settings"]["sdk_python"] = {label: python for label, (_, python) in trees.items()}
    for point in args.points.split(","):
        model, clients = point.split(":")
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {tree: {mode: [] for mode in modes} for tree in trees}
        for _ in range(args.rounds):
            for mode in modes:
                for tree, (code, python) in trees.items():
                    runs[tree][mode].append(run_child(code, python, mode, model, clients, args.seconds))
        summary: dict[str, Any] = {}
        for tree in trees:
            off = statistics.median(r["throughput"] for r in runs[tree]["off"])
            summary[tree] = {
                mode: {
                    "rps": statistics.median(r["throughput"] for r in runs[tree][mode]),
                    "ratio": statistics.median(r["throughput"] for r in runs[tree][mode]) / off,
                    "p50_ms": statistics.median(r["p50_ms"] for r in runs[tree][mode]),
                    "p99_ms": statistics.median(r["p99_ms"] for r in runs[tree][mode]),
                    "cpu_us": statistics.median(r["cpu_us"] for r in runs[tree][mode]),
                }
                for mode in modes
            }
            print(
                f"{point} [{tree}]: "
                + ", ".join(
                    f"{mode} {s['rps']:,.0f} req/s ({s['ratio']:.2f}, {s['cpu_us']:.0f} µs CPU, "
                    f"p99 {s['p99_ms']:.2f} ms)"
                    for mode, s in summary[tree].items()
                )
            )
        results["points"][point] = {"runs": runs, "summary": summary}
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    name = "telemetry_overhead-sdk" if args.sdk_python else "telemetry_overhead"  # (never over the release's file)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2))
    m = results["machine"]
    lines = [
        "# Telemetry overhead",
        "",
        machine_line(m),
        f"{args.rounds} rounds of {args.seconds} s per mode, alternating child processes; medians. "
        "Ratio: throughput over the same code's throughput without an SDK. CPU: the process's CPU time per "
        "request (all its threads), which other processes on the machine disturb less than throughput."
        + (
            " Rows `sdk X`: the same modes with opentelemetry-sdk X installed (another interpreter's virtualenv "
            "for each version, interleaved with the others)."
            if args.sdk_python
            else ""
        ),
        "",
        "| model:clients | code | "
        + " | ".join(f"{mode} req/s (ratio)" for mode in modes)
        + " | p50 ms ("
        + " / ".join(modes)
        + ") | p99 ms ("
        + " / ".join(modes)
        + ") | CPU µs per request ("
        + " / ".join(modes)
        + ") |",
        "|---|---|" + "---:|" * (len(modes) + 3),
    ]
    for point, data in results["points"].items():
        for tree, summary in data["summary"].items():
            cells = " | ".join(f"{s['rps']:,.0f} ({s['ratio']:.2f})" for s in summary.values())
            p50 = " / ".join(f"{s['p50_ms']:.3f}" for s in summary.values())
            p99 = " / ".join(f"{s['p99_ms']:.3f}" for s in summary.values())
            cpu = " / ".join(f"{s['cpu_us']:.0f}" for s in summary.values())
            lines.append(f"| {point} | {tree} | {cells} | {p50} | {p99} | {cpu} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / name}.md")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    else:
        main()
