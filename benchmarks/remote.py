"""What a remote hop costs: the reference models run locally against the same models behind the Open
Inference Protocol over loopback (the Flask plug-in under gunicorn, one worker, 8 threads), through the
remote backend.

Per model (mlp-small, mlp-large):

* one call at a time, 1 and 32 rows: onnxruntime in-process, and ``RemoteBackend.run`` with binary tensors
  and with JSON tensors (p50 and p99 latency);
* 1, 8 and 64 closed-loop clients of one row each, all through ``Server.predict``: the model local
  (onnxruntime in-process) and remote (a version loaded with ``remote=``, binary tensors, 8 connections),
  each coalesced (the default batching) and not (``BatchingConfig(enabled=False)``: one remote call per
  request). The remote server batches on its side in both cases, as the plug-in does by default.

    python benchmarks/remote.py            # writes benchmarks/results/remote.{json,md}
    python benchmarks/remote.py --quick    # a short run that proves it works (noisy figures)
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from _common import MODELS, RESULTS, build_reference, closed_loop, input_rows, machine, write_json

import inprocserve
from inprocserve._remote import RemoteBackend

HERE = Path(__file__).parent


def start_server(repository: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "INPROCSERVE_BENCH_REPOSITORY": str(repository),
        "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
    }
    command = [sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", "8", "--bind", f"127.0.0.1:{port}"]
    process = subprocess.Popen([*command, "--log-level", "warning", "_remote_server:app"], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as response:
                if response.status == 200:
                    return process, url
        except (urllib.error.URLError, ConnectionError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit("the protocol server did not become ready")
        time.sleep(0.2)


def latencies_ms(call: Any, calls: int) -> dict[str, float]:
    for _ in range(3):
        call()
    values = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        values.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}


CLIENTS = (1, 8, 64)
NOT_COALESCED = inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(enabled=False))


def through_predict(repository: Path, url: str, name: str, seconds: float) -> list[dict[str, Any]]:
    """``Server.predict`` with ``CLIENTS`` closed-loop clients: local and remote, coalesced and not."""
    results: list[dict[str, Any]] = []
    one_row = input_rows(name, 64)
    remote = inprocserve.RemoteModel(url=url, model=name, version="1", concurrency=8)
    for coalesced in (True, False):
        config = inprocserve.ModelConfig() if coalesced else NOT_COALESCED
        server = inprocserve.Server()
        try:
            server.load(f"{name}-local", path=repository / name / "1" / "model.onnx", config=config)
            server.load(f"{name}-remote", remote=remote, config=config)
            for where in ("local", "remote"):
                approach = f"{where} Server.predict, {'coalesced' if coalesced else 'not coalesced'}"
                for clients in CLIENTS:
                    before = remote_calls(server, name) if where == "remote" else 0
                    result = closed_loop(
                        approach,
                        name,
                        clients,
                        lambda x, m=f"{name}-{where}", s=server: s.predict(m, {"x": x}),
                        one_row,
                        seconds,
                    )
                    row = asdict(result)
                    if where == "remote":  # remote calls per request: < 1 means requests were coalesced
                        calls = remote_calls(server, name) - before
                        row["remote_calls_per_request"] = round(calls / max(1, result.requests), 3)
                    results.append(row)
        finally:
            server.close()
    return results


def remote_calls(server: inprocserve.Server, name: str) -> int:
    calls: int = server.status()["models"][f"{name}-remote"]["versions"]["1"]["backend_status"]["calls"]
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run that proves the benchmark works")
    args = parser.parse_args()
    calls, seconds = (30, 1.0) if args.quick else (300, 10.0)
    sequential: list[dict[str, Any]] = []
    concurrent: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder) / "models"
        for name in MODELS:
            build_reference(name, repository)
        process, url = start_server(repository)
        try:
            for name in MODELS:
                session = onnxruntime.InferenceSession(str(repository / name / "1" / "model.onnx"))
                backends = {
                    encoding: RemoteBackend(
                        name,
                        1,
                        inprocserve.RemoteModel(
                            url=url, model=name, version="1", binary_tensors=encoding == "binary", concurrency=8
                        ),
                    )
                    for encoding in ("binary", "json")
                }
                for rows in (1, 32):
                    x = np.random.default_rng(rows).standard_normal((rows, MODELS[name]["dims"][0])).astype(np.float32)
                    sequential.append(
                        {"model": name, "rows": rows, "path": "local onnxruntime"}
                        | latencies_ms(lambda x=x, s=session: s.run(None, {"x": x}), calls)
                    )
                    for encoding, backend in backends.items():
                        slot = backend.runners()[0]
                        sequential.append(
                            {"model": name, "rows": rows, "path": f"remote, {encoding} tensors"}
                            | latencies_ms(lambda x=x, b=backend, s=slot: b.run(s, {"x": x}), calls)
                        )
                for each in backends.values():
                    each.close()
                concurrent.extend(through_predict(repository, url, name, seconds))
        finally:
            process.terminate()
            process.wait(timeout=30)
    payload = {"machine": machine(), "quick": args.quick, "sequential": sequential, "concurrent": concurrent}
    write_json("remote", payload)
    lines = [
        "# What a remote hop costs (loopback, Flask plug-in under gunicorn)",
        "",
        f"`python benchmarks/remote.py{' --quick' if args.quick else ''}` on {payload['machine']['cpu']} "
        f"({payload['machine']['cores']} cores), {payload['machine']['date']}."
        + (" **Quick run: noisy figures, re-run without --quick on a quiet machine.**" if args.quick else ""),
        "",
        "One call at a time:",
        "",
        "| model | rows | path | p50 ms | p99 ms |",
        "|---|---:|---|---:|---:|",
        *(f"| {r['model']} | {r['rows']} | {r['path']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |" for r in sequential),
        "",
        "Closed-loop clients, one row each, through `Server.predict`:",
        "",
        "| model | path | clients | requests/s | p50 ms | p99 ms | remote calls per request |",
        "|---|---|---:|---:|---:|---:|---:|",
        *(
            f"| {r['model']} | {r['approach']} | {r['clients']} | {r['throughput']:.0f} | {r['p50_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {r.get('remote_calls_per_request', '')} |"
            for r in concurrent
        ),
        "",
    ]
    (RESULTS / "remote.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
