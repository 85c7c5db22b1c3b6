"""What the Open Inference Protocol costs per request, layer by layer, on the reference models:

- ``predict``: ``server.predict`` called directly (the floor);
- ``codec-binary`` / ``codec-json``: ``inprocserve.v2.Endpoints.handle`` with an encoded body, no HTTP;
- ``http-binary`` / ``http-json``: tritonclient over loopback HTTP to a Flask app (werkzeug's threaded
  server in this process) with ``INPROCSERVE_V2_PROTOCOL`` on.

One client, requests back to back, ``--requests`` per cell after a warm-up; medians of ``--rounds``
rounds, the layers alternating within a round so machine drift hits all alike. Writes
benchmarks/results/protocol_overhead.{json,md}.

    python benchmarks/protocol_overhead.py [--rounds 3] [--requests 300] [--rows 1 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import MODELS, RESULTS, build_reference, machine, write_json

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
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()

    from flask import Flask
    from inprocserve_flask import Inprocserve
    from werkzeug.serving import make_server

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models:
            build_reference(model, Path(folder))
        app = Flask(__name__)
        app.config.update(INPROCSERVE_REPOSITORY=folder, INPROCSERVE_V2_PROTOCOL=True, INPROCSERVE_EAGER=True)
        Inprocserve(app)
        server: inprocserve.Server = app.extensions["inprocserve"].server
        http_server = make_server("127.0.0.1", 0, app, threaded=True)
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
                            rounds[name].append(timed(calls[name], args.requests))
                    medians = {name: statistics.median(values) * 1000 for name, values in rounds.items()}
                    results.append({"model": model, "rows": rows, "median_ms": medians})
                    print(model, rows, {k: round(v, 3) for k, v in medians.items()}, flush=True)
        finally:
            http_server.shutdown()
            Inprocserve.close(app)

    info = machine()
    write_json("protocol_overhead", {"machine": info, "args": vars(args), "results": results})
    lines = [
        "# Open Inference Protocol overhead",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
        f"onnxruntime {info['onnxruntime']}, {info['date']}.",
        f"One client, requests back to back; median latency of {args.requests} requests, median of "
        f"{args.rounds} rounds. `codec`: `inprocserve.v2.Endpoints` without HTTP; `http`: tritonclient over "
        "loopback to Flask under werkzeug's threaded server.",
        "",
        "| model | rows | " + " | ".join(f"{name} ms" for name in LAYERS) + " |",
        "|---|---:|" + "---:|" * len(LAYERS),
    ]
    for row in results:
        cells = " | ".join(f"{row['median_ms'][name]:.3f}" for name in LAYERS)
        lines.append(f"| {row['model']} | {row['rows']} | {cells} |")
    (RESULTS / "protocol_overhead.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
