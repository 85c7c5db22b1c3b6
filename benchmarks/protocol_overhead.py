"""What the Open Inference Protocol costs per request, layer by layer, on the reference models:

- ``predict``: ``server.predict`` called directly (the floor);
- ``codec-binary`` / ``codec-json``: ``inprocserve.v2.Endpoints.handle`` with an encoded body, no HTTP;
- ``http-binary`` / ``http-json``: tritonclient over loopback HTTP to a Flask app (werkzeug's threaded
  server in this process) with ``INPROCSERVE_V2_PROTOCOL`` on.

One client, requests back to back, ``--requests`` per cell after a warm-up; medians of ``--rounds``
rounds, the layers alternating within a round so machine drift hits all alike. What a layer adds over
``predict`` (in µs and as a ratio) is taken within each round, then the median over rounds.

As production runs, the OpenTelemetry SDK is installed first, as the other benchmarks install it
(``telemetry_overhead.install_sdk("sampled")``: a ``TracerProvider`` with ``ParentBased(TraceIdRatioBased(0.01))``
and a ``BatchSpanProcessor``, a ``MeterProvider`` with a periodic reader, both exporting to exporters that
discard); ``--no-otel`` leaves it out. The werkzeug server writes no access log line per request (a
production server such as gunicorn writes none by default), so the HTTP rows do not count a write to
stderr. Writes protocol_overhead.{json,md} into ``--out`` (benchmarks/results by default: the figures of
record; point it elsewhere for a trial run).

    python benchmarks/protocol_overhead.py [--rounds 3] [--requests 300] [--rows 1 64] [--no-otel] [--out DIR]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import MODELS, RESULTS, build_reference, machine_line, with_run, write_json

import inprocserve
from inprocserve import v2

LAYERS = ("predict", "codec-binary", "codec-json", "http-binary", "http-json")


def timed(call: Callable[[], Any], requests: int) -> float:
    """Median seconds per call."""
    for _ in range(min(20, requests)):
        call()
    samples = []
    for _ in range(requests):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def layers(server: inprocserve.Server, url: str, model: str, x: np.ndarray) -> dict[str, Callable[[], Any]]:
    import tritonclient.http as triton

    endpoints = v2.Endpoints(lambda: server)
    client = triton.InferenceServerClient(url=url, network_timeout=60)

    def codec(binary: bool) -> Callable[[], Any]:
        def call() -> Any:
            body, headers = v2.encode_infer_request({"x": x}, binary=binary, binary_output=binary)
            chunks = iter([body, b""])
            answer = endpoints.handle("POST", f"/v2/models/{model}/infer", headers, lambda size: next(chunks))
            assert answer.status == 200, answer.body
            return v2.decode_infer_response(answer.body, answer.headers).outputs["y"]

        return call

    def http(binary: bool) -> Callable[[], Any]:
        def call() -> Any:
            tensor = triton.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            output = triton.InferRequestedOutput("y", binary_data=binary)
            return client.infer(model, [tensor], outputs=[output]).as_numpy("y")

        return call

    return {
        "predict": lambda: server.predict(model, {"x": x})["y"],
        "codec-binary": codec(True),
        "codec-json": codec(False),
        "http-binary": http(True),
        "http-json": http(False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--no-otel",
        dest="otel",
        action="store_false",
        help="leave the OpenTelemetry SDK out (it is installed by default)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.rounds < 1 or args.requests < 1:
        parser.error("--rounds and --requests must be at least 1")
    command = shlex.join(["python", "benchmarks/protocol_overhead.py", *sys.argv[1:]])

    if args.otel:
        from telemetry_overhead import install_sdk

        install_sdk("sampled")
    from flask import Flask
    from inprocserve_flask import Inprocserve
    from opentelemetry import metrics, trace
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass  # one stderr line per request is the dev server's cost, not the protocol's

    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        if type(provider).__module__.startswith("opentelemetry.sdk.") != args.otel:
            raise SystemExit(f"OpenTelemetry SDK {'not ' if args.otel else ''}installed as asked: {provider!r}")

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models:
            build_reference(model, Path(folder))
        app = Flask(__name__)
        app.config.update(INPROCSERVE_REPOSITORY=folder, INPROCSERVE_V2_PROTOCOL=True, INPROCSERVE_EAGER=True)
        Inprocserve(app)
        server: inprocserve.Server = app.extensions["inprocserve"].server
        http_server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
        thread = threading.Thread(target=http_server.serve_forever, daemon=True)
        thread.start()
        url = f"127.0.0.1:{http_server.server_port}"
        try:
            for model in args.models:
                features = MODELS[model]["dims"][0]
                for rows in args.rows:
                    x = np.random.default_rng(rows).standard_normal((rows, features)).astype(np.float32)
                    calls = layers(server, url, model, x)
                    reference = calls["predict"]()
                    for name, call in calls.items():  # every layer answers what predict answers
                        np.testing.assert_allclose(call(), reference, rtol=1e-5, atol=1e-6, err_msg=name)
                    rounds: dict[str, list[float]] = {name: [] for name in LAYERS}
                    for _ in range(args.rounds):
                        for name in LAYERS:
                            rounds[name].append(timed(calls[name], args.requests) * 1e6)
                    row = summary(model, rows, rounds)
                    results.append(row)
                    print(model, rows, {k: round(v, 1) for k, v in row["median_us"].items()}, flush=True)
        finally:
            http_server.shutdown()
            Inprocserve.close(app)

    payload = with_run(args, command=command, results=results)
    write_json("protocol_overhead", payload, args.out)
    (args.out / "protocol_overhead.md").write_text(markdown(payload))


def summary(model: str, rows: int, rounds: dict[str, list[float]]) -> dict[str, Any]:
    """One cell's figures from each layer's per-round medians (µs): the median over rounds, the spread, and
    what each layer adds over ``predict``, taken within each round (the layers alternate in a round)."""
    floor = rounds["predict"]
    return {
        "model": model,
        "rows": rows,
        "median_us": {name: statistics.median(values) for name, values in rounds.items()},
        "rounds_us": rounds,
        "added_us": {
            name: statistics.median(v - p for v, p in zip(values, floor, strict=True))
            for name, values in rounds.items()
        },
        "ratio": {
            name: statistics.median(v / p for v, p in zip(values, floor, strict=True))
            for name, values in rounds.items()
        },
    }


def markdown(payload: dict[str, Any]) -> str:
    settings = payload["settings"]
    otel = (
        "OpenTelemetry SDK installed (1 % trace sampling, periodic metric reader)"
        if settings["otel"]
        else "no OpenTelemetry SDK"
    )
    lines = [
        "# Open Inference Protocol overhead",
        "",
        machine_line(payload["machine"]),
        f"Command: `{payload['command']}`.",
        "",
        f"One client, requests back to back; the median latency of {settings['requests']} requests per layer, "
        f"median of {settings['rounds']} rounds (the layers alternate within a round); {otel}. `predict`: "
        "`server.predict`; `codec`: the body encoded, `inprocserve.v2.Endpoints.handle`, the answer decoded, "
        "no HTTP; `http`: tritonclient over loopback to Flask under werkzeug's threaded server, in the same "
        "process. `+ over predict` and `x predict` are taken within each round, then the median over rounds.",
        "",
        "| model | rows | layer | median µs | rounds µs (min-max) | + over predict µs | x predict |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for row in payload["results"]:
        for name in LAYERS:
            values = row["rounds_us"][name]
            lines.append(
                f"| {row['model']} | {row['rows']} | {name} | {row['median_us'][name]:,.1f} | "
                f"{min(values):,.1f}-{max(values):,.1f} | {row['added_us'][name]:,.1f} | {row['ratio'][name]:.2f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
