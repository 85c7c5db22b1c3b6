"""Which HTTP client and which tensor encoding the remote backend uses, by measurement.

1. Client cost per call: the standard library's ``http.client`` (one kept-alive connection, the least a
   hand-made pool could cost) against urllib3's ``HTTPConnectionPool``, plain and as
   ``inprocserve._oip_client`` uses it (reads bounded by the deadline), all POSTing the same inference
   request to a minimal HTTP/1.1 server on 127.0.0.1 that answers with a pre-encoded response, so the
   figures are client plus loopback cost, not model time. httpx is not installed in the project's env and
   is not measured.
2. Codec cost and bytes: encoding a request and decoding a response with the binary tensor extension against
   JSON tensors, for the reference models' input widths at 1, 32 and 256 rows.

    python benchmarks/remote_client.py            # writes benchmarks/results/remote_client.{json,md}
    python benchmarks/remote_client.py --quick    # a short run that proves it works (noisy figures)
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import urllib3
from _common import MODELS, RESULTS, machine, write_json

from inprocserve import v2
from inprocserve._oip_client import HttpClient


def serve(response: bytes, headers: dict[str, str]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else headers and body, written apart, wait for a delayed ACK

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response)))
            self.end_headers()
            self.wfile.write(response)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def per_call_us(call: Callable[[], None], calls: int, repeats: int) -> tuple[float, float, float]:
    runs = []
    for _ in range(repeats):
        call()  # connection made outside the timing
        start = time.perf_counter()
        for _ in range(calls):
            call()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(runs), min(runs), max(runs)


def clients(calls: int, repeats: int) -> list[dict[str, Any]]:
    rows = np.random.default_rng(0).standard_normal((32, MODELS["mlp-small"]["dims"][0])).astype(np.float32)
    body, request_headers = v2.encode_infer_request({"x": rows}, binary=True)
    answer, answer_headers = v2.encode_infer_response({"y": rows[:, :2]}, binary=True)
    server = serve(answer, answer_headers)
    path = "/v2/models/m/infer"
    results = []
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)

        def stdlib() -> None:
            connection.request("POST", path, body=body, headers=request_headers)
            reply = connection.getresponse()
            reply.read()
            assert reply.status == 200

        pool = urllib3.HTTPConnectionPool("127.0.0.1", server.server_port, maxsize=1, block=True)
        timeout = urllib3.Timeout(connect=1, read=10)

        def pooled() -> None:
            reply = pool.urlopen(
                "POST", path, body=body, headers=request_headers, retries=False, timeout=timeout, preload_content=True
            )
            assert reply.status == 200

        client = HttpClient(
            f"http://127.0.0.1:{server.server_port}", max_connections=1, connect_timeout_s=1, headers={}
        )

        def backend_client() -> None:
            reply = client.request("POST", path, body=body, headers=request_headers, timeout_s=10)
            assert reply.status == 200

        for name, call in (
            ("http.client (one kept-alive connection)", stdlib),
            ("urllib3 pool, plain urlopen", pooled),
            ("urllib3 pool as the backend uses it (deadline-bounded reads)", backend_client),
        ):
            median, low, high = per_call_us(call, calls, repeats)
            results.append({"client": name, "us_per_call": median, "min": low, "max": high})
        connection.close()
        pool.close()
        client.close()
    finally:
        server.shutdown()
        server.server_close()
    return results


def codecs(repeats: int) -> list[dict[str, Any]]:
    results = []
    for model, spec in MODELS.items():
        width, outputs = spec["dims"][0], spec["dims"][-1]
        for rows in (1, 32, 256):
            x = np.random.default_rng(rows).standard_normal((rows, width)).astype(np.float32)
            y = np.random.default_rng(rows + 1).standard_normal((rows, outputs)).astype(np.float32)
            for binary in (True, False):
                request, _ = v2.encode_infer_request({"x": x}, binary=binary)
                response, response_headers = v2.encode_infer_response({"y": y}, binary=binary)

                def round_trip(
                    x: np.ndarray = x,
                    binary: bool = binary,
                    response: bytes = response,
                    headers: Any = response_headers,
                ) -> None:
                    v2.encode_infer_request({"x": x}, binary=binary)
                    v2.decode_infer_response(response, headers)

                loops = max(3, 2000 // rows)
                median, low, high = per_call_us(round_trip, loops, repeats)
                results.append(
                    {
                        "model": model,
                        "rows": rows,
                        "encoding": "binary" if binary else "json",
                        "request_bytes": len(request),
                        "response_bytes": len(response),
                        "client_codec_us": median,
                        "min": low,
                        "max": high,
                    }
                )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run that proves the benchmark works")
    args = parser.parse_args()
    calls, repeats = (200, 3) if args.quick else (3000, 7)
    payload = {"machine": machine(), "quick": args.quick, "clients": clients(calls, repeats), "codecs": codecs(repeats)}
    write_json("remote_client", payload)
    lines = [
        "# Remote backend: HTTP client and tensor encoding",
        "",
        f"`python benchmarks/remote_client.py{' --quick' if args.quick else ''}` on {payload['machine']['cpu']} "
        f"({payload['machine']['cores']} cores), {payload['machine']['date']}."
        + (" **Quick run: noisy figures, re-run without --quick on a quiet machine.**" if args.quick else ""),
        "",
        "Per call, a 32-row mlp-small request (binary tensors) to a minimal loopback server (median of runs):",
        "",
        "| client | µs per call | min | max |",
        "|---|---:|---:|---:|",
        *(f"| {r['client']} | {r['us_per_call']:.0f} | {r['min']:.0f} | {r['max']:.0f} |" for r in payload["clients"]),
        "",
        "Client-side codec cost (encode the request, decode the response) and body sizes:",
        "",
        "| model | rows | encoding | request bytes | response bytes | codec µs |",
        "|---|---:|---|---:|---:|---:|",
        *(
            f"| {r['model']} | {r['rows']} | {r['encoding']} | {r['request_bytes']:,} | {r['response_bytes']:,} | "
            f"{r['client_codec_us']:.0f} |"
            for r in payload["codecs"]
        ),
        "",
    ]
    (RESULTS / "remote_client.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
