"""The inprocserve demo: build a model, serve it, fire concurrent requests, and show what happened.

Run with ``make demo-core``, or ``python examples/demo.py`` after ``pip install "./[testing]"`` from the
clone's root (examples/README.md). Everything happens in a temporary folder; nothing is downloaded.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import inprocserve
from inprocserve.testing import build_mlp_model, save_model

THREADS = 32
REQUESTS_PER_THREAD = 60
FEATURES = 512
LAYERS = (FEATURES, 2048, 2048, 2)


def measure(label: str, call: object, rows: list[np.ndarray]) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        mine = []
        x = rows[index]
        for _ in range(REQUESTS_PER_THREAD):
            start = time.perf_counter()
            call(x)  # type: ignore[operator]
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(THREADS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    rate = len(latencies) / elapsed
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    print(f"  {label:<34} {rate:>9,.0f} req/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
    return rate, latencies


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder)
        print(f"1. Building a {'-'.join(map(str, LAYERS))} MLP (fraud scorer) into {repository}/fraud/1/model.onnx")
        model = build_mlp_model(LAYERS, seed=1)
        path = save_model(model, repository, "fraud", 1)

        server = inprocserve.Server(repository)
        print(f"2. Server loaded: {server.models}")
        rng = np.random.default_rng(0)
        rows = [rng.standard_normal((1, FEATURES)).astype(np.float32) for _ in range(THREADS)]

        reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        answer = server.predict("fraud", {"x": rows[0]})
        expected = reference.run(None, {"x": rows[0]})[0]
        assert np.allclose(answer["y"], expected, atol=1e-5)
        print(f"3. One prediction: {answer['y'].round(4).tolist()} from version {answer.version} (matches onnxruntime)")

        print(f"4. {THREADS} threads x {REQUESTS_PER_THREAD} one-row requests, side by side:")
        naive_rate, _ = measure("each thread calls session.run", lambda x: reference.run(None, {"x": x}), rows)
        served_rate, _ = measure("server.predict (coalesced)", lambda x: server.predict("fraud", {"x": x}), rows)
        status = server.status()["models"]["fraud"]["versions"]["1"]
        print(
            f"   coalescing served {served_rate / naive_rate:.1f}x the requests per second of naive calls; "
            f"{status['rows_run'] / max(status['batches_run'], 1):.1f} rows per session.run on average"
        )

        print("5. Bad requests get typed errors that say what to fix:")
        for bad in ({"x": np.ones((1, 3), np.float32)}, {"features": rows[0]}, {"x": [["a"] * FEATURES]}):
            try:
                server.predict("fraud", bad)
            except inprocserve.InvalidInputError as exc:
                print(f"   InvalidInputError: {exc}")
        try:
            server.predict("churn", {"x": rows[0]})
        except inprocserve.ModelNotFoundError as exc:
            print(f"   ModelNotFoundError: {exc}")

        print("6. Hot reload: version 2 appears on disk while 8 threads keep calling predict")
        stop = threading.Event()
        seen: dict[int, int] = {}
        errors: list[BaseException] = []
        counting = threading.Lock()  # (8 threads count into one dict: a read-then-write loses counts without it)

        def keep_calling() -> None:
            while not stop.is_set():
                try:
                    version = server.predict("fraud", {"x": rows[1]}).version
                    with counting:
                        seen[version] = seen.get(version, 0) + 1
                except Exception as exc:  # the demo reports any failure
                    errors.append(exc)

        callers = [threading.Thread(target=keep_calling) for _ in range(8)]
        for caller in callers:
            caller.start()
        time.sleep(0.3)
        save_model(build_mlp_model(LAYERS, seed=2), repository, "fraud", 2)
        server.refresh()
        time.sleep(0.3)
        stop.set()
        for caller in callers:
            caller.join()
        print(f"   answers by version: {dict(sorted(seen.items()))}; failed requests: {len(errors)}")
        print(f"   now serving: {server.models}")

        server.close()
        print("7. Server closed: queued work drained, sessions released.")


if __name__ == "__main__":
    main()
