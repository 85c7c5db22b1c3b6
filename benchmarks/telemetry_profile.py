"""Where the per-request time goes, in microseconds per request, on one thread (N=1).

1. ``predict`` over a raw ``session.run`` with no SDK: the calling thread's CPU time per call, both
   timed back to back, interleaved, then
   ``predict`` under cProfile; each function's own time is scaled so that all Python time (everything but
   the ``run`` call itself) adds up to the measured difference. cProfile inflates cheap calls, so read
   the split as proportions of a measured total, not as exact figures.
2. The OpenTelemetry SDK's cost per operation, timed in isolation (thread CPU time, best of 5 repeats)
   with the SDK set up as production runs it (``ParentBased(TraceIdRatioBased(0.01))``, a batch span
   processor, a periodic metric reader): a span under each kind of parent, a histogram record by number of
   attributes, and the library's per-version ``Recorder`` calls.

    python benchmarks/telemetry_profile.py [--calls 20000] [--model mlp-small]

Prints a table and writes benchmarks/results/telemetry_profile.{json,md}.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import RESULTS, build_reference, input_rows, machine
from telemetry_overhead import install_sdk

import inprocserve


def is_session_run(label: str) -> bool:
    """Whether a profile entry is onnxruntime's own run (a C function: the model's compute)."""
    return label.startswith("<") and "onnxruntime" in label and ("run>" in label or "'run'" in label)


def per_call_us(call: Callable[[], Any], calls: int) -> float:
    """CPU time of this thread per call: on a shared machine, other processes stretch wall time but not
    this (onnxruntime's own pool threads are not counted, alike for ``run`` and ``predict``)."""
    start = time.thread_time()
    for _ in range(calls):
        call()
    return (time.thread_time() - start) / calls * 1e6


def request_overhead(model: str, calls: int) -> dict[str, Any]:
    import onnxruntime

    with tempfile.TemporaryDirectory() as folder:
        path = build_reference(model, Path(folder))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        with inprocserve.Server(folder) as server:
            x = input_rows(model, 1)[0]
            feed = {"x": x}

            def raw() -> Any:
                return session.run(None, feed)

            def predict() -> Any:
                return server.predict(model, feed)

            for call in (raw, predict):
                per_call_us(call, calls // 10)  # warm up
            raws, predicts = [], []
            for _ in range(5):  # interleaved, so machine drift hits both
                raws.append(per_call_us(raw, calls // 5))
                predicts.append(per_call_us(predict, calls // 5))
            raw_us, predict_us = statistics.median(raws), statistics.median(predicts)
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(calls):
                predict()
            profile.disable()
    stats = pstats.Stats(profile)
    own: dict[str, float] = {}
    inclusive: dict[str, float] = {}
    for (filename, line, name), (_cc, _nc, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        label = name if filename == "~" else f"{Path(filename).parent.name}/{Path(filename).name}:{line}({name})"
        own[label] = own.get(label, 0.0) + tottime
        if "inprocserve" in filename:
            inclusive[label] = cumtime
    run_s = sum(seconds for label, seconds in own.items() if is_session_run(label))
    python_s = sum(own.values()) - run_s
    overhead_us = predict_us - raw_us
    scale = overhead_us / python_s  # profiled Python seconds -> measured microseconds per request

    def top(items: dict[str, float], count: int) -> list[list[Any]]:
        ranked = sorted(items.items(), key=lambda item: -item[1])[:count]
        return [[label, round(seconds * scale, 2)] for label, seconds in ranked]

    return {
        "raw_run_us": raw_us,
        "predict_us": predict_us,
        "overhead_us": overhead_us,
        "parts_us": top({label: s for label, s in own.items() if not is_session_run(label)}, 25),
        # inclusive of what they call; a function that took longer than all the runs together encloses them
        # (nothing else on the path comes close), so the runs are taken out of it
        "functions_us": top({label: s - run_s if s >= run_s else s for label, s in inclusive.items()}, 25),
    }


def sdk_costs(repeat: int = 5, number: int = 20_000) -> dict[str, float]:
    install_sdk("sampled")
    from opentelemetry import context, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from inprocserve import _telemetry

    tracer = _telemetry.tracer()
    histogram = _telemetry.METRICS.request_duration
    recorder = _telemetry.Recorder("m", 1)
    attributes = {
        0: None,
        2: {"inprocserve.model.name": "m", "inprocserve.model.version": 1},
        4: dict(recorder.finished_attributes("stable", None)),
    }
    unsampled_parent = trace.set_span_in_context(
        NonRecordingSpan(SpanContext(1, 2, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT)))
    )

    def best(call: Callable[[], Any]) -> float:
        return min(timeit.repeat(call, number=number, repeat=repeat, timer=time.thread_time)) / number * 1e6

    costs = {
        "SDK span start+end, root, 1 % sampler": best(lambda: tracer.start_span("x", context=Context()).end()),
        "SDK span start+end, under an unsampled parent": best(lambda: tracer.start_span("x", unsampled_parent).end()),
    }
    token = context.attach(unsampled_parent)
    try:
        costs["library request span under an unsampled parent (skipped)"] = best(
            lambda: _telemetry.end_request_span(
                _telemetry.start_request_span("m"),
                version=1,
                variant="stable",
                reason="r",
                rows=1,
                queue_wait_s=None,
                batch=None,
                flags=(),
                provider=None,
                error=None,
            )
        )
    finally:
        context.detach(token)
    for count, attrs in attributes.items():
        costs[f"histogram record, {count} attributes"] = best(lambda attrs=attrs: histogram.record(0.001, attrs))
    costs["Recorder.request_finished (1 record)"] = best(
        lambda: recorder.request_finished(0.001, variant="stable", error=None)
    )
    costs["Recorder.batch_finished (worker batch: 3 records)"] = best(
        lambda: recorder.batch_finished(8, 0.001, inline=False, queue_wait_s=0.0002)
    )
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--model", default="mlp-small")
    args = parser.parse_args()
    overhead = request_overhead(args.model, args.calls)  # before the SDK: it cannot be uninstalled
    costs = sdk_costs()
    results = {"machine": machine(), "settings": vars(args), "request": overhead, "sdk_us": costs}
    lines = [
        "# Per-request time, one thread",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, {results['machine']['date']}.",
        "",
        f"{args.model}: raw session.run {overhead['raw_run_us']:.1f} µs, predict {overhead['predict_us']:.1f} µs, "
        f"overhead {overhead['overhead_us']:.1f} µs per call "
        "(no SDK; the calling thread's CPU time). Split by cProfile's own time, scaled:",
        "",
        "| part | µs per request |",
        "|---|---:|",
        *(f"| `{label}` | {us:.2f} |" for label, us in overhead["parts_us"]),
        "",
        "The library's functions, inclusive of what they call (less the session's run), scaled alike:",
        "",
        "| function | µs per request |",
        "|---|---:|",
        *(f"| `{label}` | {us:.2f} |" for label, us in overhead["functions_us"]),
        "",
        "OpenTelemetry SDK, per operation (best of 5):",
        "",
        "| operation | µs |",
        "|---|---:|",
        *(f"| {name} | {us:.2f} |" for name, us in costs.items()),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "telemetry_profile.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "telemetry_profile.md").write_text(text)


if __name__ == "__main__":
    main()
