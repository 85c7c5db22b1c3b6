"""Where the per-request time goes, in microseconds per request, on one thread (N=1).

1. ``predict`` over a raw ``session.run`` with no SDK: the calling thread's CPU time per call, both
   timed back to back, interleaved, then
   ``predict`` under cProfile; each function's own time is scaled so that all Python time (everything but
   the ``run`` call itself) adds up to the measured difference. cProfile inflates cheap calls, so read
   the split as proportions of a measured total, not as exact figures.
2. The OpenTelemetry SDK's cost per operation, timed in isolation (thread CPU time, best of 5 repeats)
   with the SDK set up as production runs it (``ParentBased(TraceIdRatioBased(0.01))``, a batch span
   processor, a periodic metric reader): a span under each kind of parent, the library's root spans (a
   request's, a batch's) against the SDK's, a histogram record by number of attributes, a counter, and the
   library's per-version ``Recorder`` calls: with no server open (the calling thread records every 64th
   time, in bulk) and as a server runs them (the recording thread records).

    python benchmarks/telemetry_profile.py [--calls 20000] [--model mlp-small] [--out DIR]

Prints a table and writes telemetry_profile.{json,md} into ``--out`` (benchmarks/results by default).

3. With ``--per-request``: what one ``predict`` costs with the SDK installed (modes ``off``, ``sampled``,
   ``traces``, ``metrics`` of ``telemetry_overhead.py``), one caller thread back to back, each mode in its
   own child process, rounds alternating, and with ``--baseline DIR`` also against another ``inprocserve``
   package, interleaved. Per call: the calling thread's CPU time (what the request path pays), the
   process's CPU time (also any thread that records for it, and onnxruntime's) and wall time. Medians over
   rounds. Writes telemetry_per_request.{json,md} into ``--out``.

    python benchmarks/telemetry_profile.py --per-request [--calls 20000] [--rounds 3] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import RESULTS, build_reference, input_rows, machine, machine_line
from telemetry_overhead import install_sdk

CHILD = "child"
PER_REQUEST_MODES = ("off", "sampled", "traces", "metrics")
ROOT = Path(__file__).resolve().parent.parent


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

    import inprocserve

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
    from opentelemetry import context, metrics, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from inprocserve import _recorder, _telemetry

    tracer = _telemetry._TRACER
    histogram = _telemetry.METRICS.request_duration
    recorder = _recorder.Recorder("m", 1)
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
    # root spans the library decides before the SDK under this sampler (99 % of them dropped): a request
    # outside any trace, and a worker's batch span with the spans of the requests it served to link
    costs["library root request span, 1 % sampler"] = best(lambda: _telemetry.start_request_span("m").end())
    for served in (1, 8, 40):
        spans = [_telemetry.start_request_span("m") for _ in range(served)]
        costs[f"library batch span, 1 % sampler, {served} request spans"] = best(
            lambda spans=spans: _telemetry.end_batch_span(
                _telemetry.start_batch_span("m", 1, iter(spans)), rows=1, requests=1, compute_s=0.001, error=None
            )
        )
        costs[f"SDK batch span (as before), 1 % sampler, {served} request spans"] = best(
            lambda spans=spans: tracer.start_span(
                "inprocserve.batch",
                context=Context(),
                links=_telemetry._links(spans),
                attributes={"inprocserve.model.name": "m", "inprocserve.model.version": 1},
            ).end()
        )
    for count, attrs in attributes.items():
        costs[f"histogram record, {count} attributes"] = best(lambda attrs=attrs: histogram.record(0.001, attrs))
    costs.update(record_steps(histogram, attributes, best))
    counter = metrics.get_meter("benchmark").create_counter("benchmark.count")
    costs["SDK counter add, 2 attributes"] = best(lambda: counter.add(1, attributes[2]))
    costs["Recorder.cache_lookup (an integer read at collection)"] = best(lambda: recorder.cache_lookup("hit"))
    # With no server open there is no recording thread: the thread that adds the 64th record records them
    costs["Recorder.request_finished, no recording thread (1 record)"] = best(
        lambda: recorder.request_finished(0.001, variant="stable", error=None)
    )
    costs["Recorder.batch_finished, no recording thread (3 records)"] = best(
        lambda: recorder.batch_finished(8, 0.001, inline=False, queue_wait_s=0.0002)
    )

    # As with a server open: what the request's (or worker's) thread pays while the recording thread
    # records. Short runs with a pause before each, so that the backlog stays under its bound (a tight loop
    # outpaces any recorder, and past the bound the caller records itself).
    def paced(call: Callable[[], Any]) -> float:
        pause = lambda: time.sleep(0.05)  # noqa: E731
        runs = timeit.repeat(call, setup=pause, number=1_000, repeat=4 * repeat, timer=time.thread_time)
        return min(runs) / 1_000 * 1e6

    _telemetry.METRICS._recording.open()
    try:
        costs["Recorder.request_finished, request's thread (recording thread running)"] = paced(
            lambda: recorder.request_finished(0.001, variant="stable", error=None)
        )
        costs["Recorder.batch_finished, worker's thread (recording thread running)"] = paced(
            lambda: recorder.batch_finished(8, 0.001, inline=False, queue_wait_s=0.0002)
        )
    finally:
        _telemetry.METRICS._recording.close()
    return costs


def per_request_child(mode: str, model: str, calls: int) -> None:
    """One ``predict`` after another on this thread, ``mode``'s SDK installed: per-call costs as JSON."""
    if mode != "off":
        install_sdk(mode)
    import inprocserve

    with tempfile.TemporaryDirectory() as folder:
        build_reference(model, Path(folder))
        with inprocserve.Server(folder) as server:
            feed = {"x": input_rows(model, 1)[0]}
            for _ in range(calls // 5):  # warm up: sessions, caches, the SDK's attribute sets
                server.predict(model, feed)
            wall, thread, process = time.perf_counter(), time.thread_time(), time.process_time()
            for _ in range(calls):
                server.predict(model, feed)
            thread = time.thread_time() - thread
            process = time.process_time() - process
            wall = time.perf_counter() - wall
    scale = 1e6 / calls
    result = {"thread_us": thread * scale, "process_us": process * scale, "wall_us": wall * scale}
    print(json.dumps(result | {"inprocserve": inprocserve.__file__}))


def per_request(args: argparse.Namespace) -> None:
    modes = args.modes.split(",")
    if not set(modes) <= set(PER_REQUEST_MODES):
        raise SystemExit(f"--modes: choose from {', '.join(PER_REQUEST_MODES)}")
    trees = {"now": ROOT} if args.baseline is None else {"before": args.baseline.resolve(), "now": ROOT}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {tree: {mode: [] for mode in modes} for tree in trees}
    for _ in range(args.rounds):
        for mode in modes:
            for tree, code in trees.items():
                out = subprocess.run(
                    [sys.executable, __file__, CHILD, mode, args.model, str(args.calls)],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=dict(os.environ, PYTHONPATH=str(code)),
                ).stdout
                result = json.loads(out.strip().splitlines()[-1])
                if not result.pop("inprocserve").startswith(str(code)):
                    raise RuntimeError(f"the child did not import the code under {code}")
                runs[tree][mode].append(result)
    keys = ("thread_us", "process_us", "wall_us")
    summary = {
        tree: {mode: {key: statistics.median(r[key] for r in runs[tree][mode]) for key in keys} for mode in modes}
        for tree in trees
    }
    lines = [
        "# One predict with the SDK installed, one thread",
        "",
        f"{machine_line(machine())} {args.model}, "
        f"{args.calls} calls per run, {args.rounds} rounds alternating child processes; medians. µs per call: "
        "the calling thread's CPU time / the process's CPU time (every thread) / wall time.",
        "",
        "| code | " + " | ".join(modes) + " |",
        "|---|" + "---:|" * len(modes),
        *(
            f"| {tree} | "
            + " | ".join(f"{s['thread_us']:.1f} / {s['process_us']:.1f} / {s['wall_us']:.1f}" for s in by_mode.values())
            + " |"
            for tree, by_mode in summary.items()
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {key: str(value) for key, value in vars(args).items()}
    payload = {"machine": machine(), "settings": settings, "runs": runs, "summary": summary}
    (args.out / "telemetry_per_request.json").write_text(json.dumps(payload, indent=2))
    (args.out / "telemetry_per_request.md").write_text(text)


def record_steps(
    histogram: Any, attributes: dict[int, Any], best: Callable[[Callable[[], Any]], float]
) -> dict[str, float]:
    """A histogram record split into the SDK's steps, by number of attributes: what each release does on every
    record (docs/observability.md, "The SDK's release"). Reads the SDK's internals, so a release that moved
    them gives no rows. 1.45 cleans the attributes into a new dict when it builds the ``Measurement`` and keys
    the aggregation by a recursive, sorted hash of them; 1.44 did neither (a frozen set of the items)."""
    try:
        from opentelemetry.context import get_current
        from opentelemetry.sdk.metrics._internal import _view_instrument_match as view_match
        from opentelemetry.sdk.metrics._internal.measurement import Measurement

        sdk = histogram._real_instrument
        consumer = sdk._measurement_consumer
        exemplar_filter = consumer._sdk_config.exemplar_filter
        storage = next(iter(consumer._reader_storages.values()))
        match = storage._get_or_init_view_instrument_match(sdk)[0]
    except (AttributeError, ImportError, IndexError, StopIteration):
        return {}
    hash_attributes = getattr(view_match, "_hash_attributes", None)
    context = get_current()
    steps: dict[str, float] = {}
    for count, attrs in attributes.items():
        measurement = Measurement(0.001, 1, sdk, context, attrs)
        steps[f"  step: Measurement(...), {count} attributes (1.45: cleans them)"] = best(
            lambda attrs=attrs: Measurement(0.001, 1, sdk, context, attrs)
        )
        steps[f"  step: exemplar filter, {count} attributes"] = best(
            lambda attrs=attrs: exemplar_filter.should_sample(0.001, 1, attrs, context)
        )
        steps[f"  step: view match (copy, key, aggregate), {count} attributes"] = best(
            lambda measurement=measurement: match.consume_measurement(measurement, False)
        )
        if hash_attributes is not None:
            steps[f"  step: key, _hash_attributes (1.45), {count} attributes"] = best(
                lambda attrs=attrs: hash_attributes(dict(attrs or {}))
            )
        else:
            steps[f"  step: key, frozenset of items (1.44), {count} attributes"] = best(
                lambda attrs=attrs: frozenset(dict(attrs or {}).items())
            )
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--model", default="mlp-small")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the results")
    parser.add_argument("--per-request", action="store_true", help="only section 3: predict with the SDK installed")
    parser.add_argument("--modes", default=",".join(PER_REQUEST_MODES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="a folder holding the inprocserve package to compare with")
    args = parser.parse_args()
    if args.per_request:
        per_request(args)
        return
    overhead = request_overhead(args.model, args.calls)  # before the SDK: it cannot be uninstalled
    costs = sdk_costs()
    settings = {key: str(value) for key, value in vars(args).items()}
    results = {"machine": machine(), "settings": settings, "request": overhead, "sdk_us": costs}
    lines = [
        "# Per-request time, one thread",
        "",
        machine_line(results["machine"]),
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
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "telemetry_profile.json").write_text(json.dumps(results, indent=2))
    (args.out / "telemetry_profile.md").write_text(text)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        per_request_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
