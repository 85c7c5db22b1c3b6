"""A small model's one-row run, timed back to back and inside a web request, for the session settings that
matter to a lone caller.

Between two requests a web worker runs thousands of lines of Python (routing, JSON, the response), which
push the model's weights and code out of the core's caches: the next run starts cold. This measures how much
that costs each way of running the model, on one thread, no HTTP, no OpenTelemetry SDK:

* ``default``: onnxruntime's default session (every core, threads that spin between runs): what a naive view
  calls;
* ``one thread``: one intra-op thread, no spinning: what inprocserve gives a model this small;
* ``one thread, spinning``: the same with spinning allowed;
* ``inprocserve``: the Flask plug-in's ``predict`` (its run is the ``one thread`` session's).

Each runs in blocks of ``--block`` requests through Flask's test client (a full request cycle: the WSGI
environ, routing, ``request.get_json``, the view, a JSON response), the ways taking turns block by block,
and in blocks of back-to-back runs with nothing in between. Reported: the median run (for inprocserve, also
its ``Server.predict`` and the plug-in's ``predict`` around it) and the median request, wall time.

Every turn is taken twice: with the machine's other cores left idle (``idle``), and with each of them kept
busy by a process that spins (``busy``: another worker of the same server serving, or any other load),
started once and paused (SIGSTOP) while the idle half runs.

    python benchmarks/in_request.py [--blocks 10] [--block 500]

Writes benchmarks/results/in_request.{json,md} (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from _common import RESULTS, build_reference, input_rows, machine, machine_line, write_json

MODEL = "mlp-small"
SESSIONS = {
    "default": {},
    "one thread": {"threads": 1, "spinning": "0"},
    "one thread, spinning": {"threads": 1, "spinning": "1"},
}


def session(path: Path, threads: int | None = None, spinning: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Stopwatch:
    """Wraps a callable and keeps how long each call took (seconds), while ``on``."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self.call, self.times, self.on = call, [], False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.on:
            return self.call(*args, **kwargs)
        started = time.perf_counter()
        try:
            return self.call(*args, **kwargs)
        finally:
            self.times.append(time.perf_counter() - started)


def neighbours() -> list[subprocess.Popen[bytes]]:
    """One spinning process per core beyond the first, paused (the ``busy`` half resumes them)."""
    count = len(os.sched_getaffinity(0)) - 1 if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1) - 1
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    for spinner in spinners:
        spinner.send_signal(signal.SIGSTOP)
    return spinners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--block", type=int, default=500)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import inprocserve_flask
    from flask import Flask, Response, request

    import inprocserve
    import inprocserve._ort_backend as ort_backend

    folder = Path(tempfile.mkdtemp(prefix="in-request-"))
    path = build_reference(MODEL, folder)
    x = input_rows(MODEL, 1)[0]
    runs = {name: Stopwatch(session(path, **settings).run) for name, settings in SESSIONS.items()}
    # inprocserve's own pieces, timed where the plug-in calls them
    backend_run = Stopwatch(ort_backend.OnnxruntimeBackend.run)
    server_predict = Stopwatch(inprocserve.Server.predict)
    plugin_predict = Stopwatch(inprocserve_flask.predict)
    ort_backend.OnnxruntimeBackend.run = lambda self, *a, **k: backend_run(self, *a, **k)  # type: ignore[method-assign]
    inprocserve.Server.predict = lambda self, *a, **k: server_predict(self, *a, **k)  # type: ignore[method-assign]

    app = Flask(__name__)
    app.config["INPROCSERVE_REPOSITORY"] = str(folder)
    inprocserve_flask.Inprocserve(app)
    current = {"way": "default"}

    @app.post("/predict")
    def score() -> Response:
        rows = np.asarray(request.get_json(force=True)["x"], dtype=np.float32)
        way = current["way"]
        y = plugin_predict(MODEL, {"x": rows})["y"] if way == "inprocserve" else runs[way](None, {"x": rows})[0]
        return Response(json.dumps({"y": y.tolist()}), mimetype="application/json")

    client = app.test_client()
    body = json.dumps({"x": x.tolist()})
    ways = [*SESSIONS, "inprocserve"]
    states = ("idle", "busy")
    watches = [*runs.values(), backend_run, server_predict, plugin_predict]
    seen: dict[str, dict[str, dict[str, list[float]]]] = {state: {way: {} for way in ways} for state in states}
    spinners = neighbours()
    try:
        for turn in range(args.blocks + 1):  # the first turn warms up
            for state in states:
                for spinner in spinners:
                    spinner.send_signal(signal.SIGCONT if state == "busy" else signal.SIGSTOP)
                for way in ways:
                    current["way"] = way
                    for watch in watches:
                        watch.times, watch.on = [], turn > 0
                    started = time.perf_counter()
                    for _ in range(args.block):
                        client.post("/predict", data=body, content_type="application/json")
                    if turn == 0:
                        continue
                    parts = (
                        {"run": backend_run, "Server.predict": server_predict, "plug-in predict": plugin_predict}
                        if way == "inprocserve"
                        else {"run": runs[way]}
                    )
                    figures = {"request": [(time.perf_counter() - started) / args.block]}
                    figures |= {part: watch.times for part, watch in parts.items()}
                    for part, times in figures.items():
                        seen[state][way].setdefault(part, []).append(statistics.median(times) * 1e6)
                for way, run in runs.items():
                    run.times, run.on = [], turn > 0
                    for _ in range(args.block):
                        run(None, {"x": x})
                    if turn > 0:
                        seen[state][way].setdefault("run_back_to_back", []).append(statistics.median(run.times) * 1e6)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
        inprocserve_flask.Inprocserve.close(app)

    summary = {
        state: {
            way: {f"{part}_us": statistics.median(values) for part, values in seen[state][way].items()} for way in ways
        }
        for state in states
    }
    results = {"machine": machine(), "settings": {k: str(v) for k, v in vars(args).items()}, "summary": summary}
    write_json("in_request", results, args.out)
    lines = [
        "# A one-row run back to back and inside a Flask request",
        "",
        machine_line(results["machine"]),
        f"Model {MODEL}; {args.blocks} blocks of {args.block} requests per way, the ways taking turns; medians "
        "of the blocks' medians, wall time, µs. A request: Flask's test client, a full request cycle on one "
        "thread (no HTTP). Other cores: `idle`, or each kept busy by a spinning process (`busy`), in turns.",
        "",
        "| other cores | way | run, back to back | run, in a request | Server.predict, in a request | plug-in "
        "predict, in a request | request |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for state, ways_seen in summary.items():
        for way, s in ways_seen.items():
            parts = ("run_back_to_back", "run", "Server.predict", "plug-in predict")
            text = " | ".join("—" if s.get(f"{part}_us") is None else f"{s[f'{part}_us']:.1f}" for part in parts)
            lines.append(f"| {state} | {way} | {text} | {s['request_us']:.0f} |")
    (args.out / "in_request.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
