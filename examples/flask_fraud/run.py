"""The inprocserve demo: the fraud app under gunicorn, concurrent traffic, and a summary.

    make demo          (or: python examples/flask_fraud/run.py)

Builds and trains the models into a temporary repository, starts gunicorn (2 workers, --preload) on a
free loopback port, sends concurrent scoring requests from 16 clients as 500 different users, and prints
what happened: throughput, latency, the canary's share, and how the shadow version compared.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

# The training below is full-batch products of small matrices: more BLAS threads only contend for the cores
# (both networks beside two busy processes on a 2-core machine: 48 s against 3.4 s with one). One thread for
# this process; gunicorn's workers get the caller's setting back.
_CALLERS_BLAS_THREADS = os.environ.get("OPENBLAS_NUM_THREADS")
os.environ["OPENBLAS_NUM_THREADS"] = "1"  # (read when numpy loads, just below)

from build_models import build, transactions  # noqa: E402

CLIENTS = 16


def _without_control_socket() -> list[str]:
    """gunicorn 27 opens a control socket at one path per user (``$XDG_RUNTIME_DIR/gunicorn.ctl``, else
    ``~/.gunicorn/gunicorn.ctl``) and takes it from
    any gunicorn already there: the demo must not take it from the developer's own app (docs/deployment.md,
    "Several gunicorn instances on one host"). Older releases refuse the flag and open no socket."""
    major = importlib.metadata.version("gunicorn").split(".")[0]
    return ["--no-control-socket"] if major.isdigit() and int(major) >= 27 else []


REQUESTS_PER_CLIENT = int(os.environ.get("FRAUD_DEMO_REQUESTS", "150"))  # per client
USERS = 500


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def post(url: str, body: dict, token: str) -> dict:
    call = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(call, timeout=30) as response:
        return json.loads(response.read())


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder)
        print("1. Training three fraud models on 40 000 synthetic transactions ...")
        quality = build(repository)
        for version, value in quality.items():
            role = {1: "stable", 2: "canary, 10 % of users", 3: "shadow"}[version]
            print(
                f"   fraud v{version} ({role}): ROC AUC {value['auc']:.3f}, test accuracy {value['accuracy']:.3f} "
                f"(answering 'not fraud' every time: {value['baseline']:.3f})"
            )

        # The socket is bound here and handed to gunicorn (--bind fd://N): its port is known before gunicorn
        # starts, and no other process can take it meanwhile.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        base = f"http://127.0.0.1:{listener.getsockname()[1]}"
        token = secrets.token_hex(32)  # the app refuses a short token
        env = {
            **os.environ,
            "FRAUD_MODELS": str(repository),
            "FRAUD_ADMIN_TOKEN": token,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        env.pop("OPENBLAS_NUM_THREADS")
        if _CALLERS_BLAS_THREADS is not None:
            env["OPENBLAS_NUM_THREADS"] = _CALLERS_BLAS_THREADS
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            str(HERE / "gunicorn.conf.py"),
            "--preload",
            "--workers",
            "2",
            "--threads",
            "16",
            "--bind",
            f"fd://{listener.fileno()}",
            "--graceful-timeout",
            "5",
            "--log-level",
            "warning",
            *_without_control_socket(),
            "app:app",
        ]
        print(f"2. Starting gunicorn: 2 workers x 16 threads, --preload, on {base}")
        with listener:  # closed here once gunicorn holds its own copy
            process = subprocess.Popen(command, env=env, cwd=HERE, pass_fds=[listener.fileno()])
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    ready = get(f"{base}/-/inprocserve/ready")
                    if ready.get("ready"):
                        break
                except (OSError, json.JSONDecodeError):  # not yet: refused, or timed out while gunicorn loads the app
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("gunicorn did not become ready")
                time.sleep(0.2)
            print(f"   ready: {ready}")

            x, _ = transactions(5000, seed=7)
            latencies: list[float] = []
            variants: dict[str, int] = {}
            users_by_version: dict[int, set[str]] = {}
            errors: list[str] = []
            lock = threading.Lock()

            def client(index: int) -> None:
                rng = random.Random(index)
                for _ in range(REQUESTS_PER_CLIENT):
                    user = f"user-{rng.randrange(USERS)}"
                    start = rng.randrange(len(x) - 3)
                    rows = x[start : start + rng.randint(1, 3)].tolist()
                    body = json.dumps({"transactions": rows}).encode()
                    call = urllib.request.Request(
                        f"{base}/score", data=body, headers={"Content-Type": "application/json", "X-User-Id": user}
                    )
                    started = time.perf_counter()
                    try:
                        with urllib.request.urlopen(call, timeout=30) as response:
                            answer = json.loads(response.read())
                    except Exception as exc:  # reported in the summary
                        with lock:
                            errors.append(repr(exc))
                        continue
                    elapsed = time.perf_counter() - started
                    with lock:
                        latencies.append(elapsed)
                        variants[answer["variant"]] = variants.get(answer["variant"], 0) + 1
                        users_by_version.setdefault(answer["version"], set()).add(user)

            print(f"3. {CLIENTS} clients x {REQUESTS_PER_CLIENT} requests, as {USERS} users ...")
            threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
            began = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - began

            latencies.sort()
            total = len(latencies)
            print("4. Summary")
            print(f"   requests: {total} answered, {len(errors)} failed, {total / elapsed:,.0f} req/s over HTTP")
            print(
                f"   latency: p50 {statistics.median(latencies) * 1000:.1f} ms, "
                f"p99 {latencies[int(total * 0.99)] * 1000:.1f} ms"
            )
            canary = variants.get("canary", 0)
            print(f"   variants: {variants}; canary share {canary / max(total, 1):.1%} of requests")
            both = users_by_version.get(1, set()) & users_by_version.get(2, set())
            print(f"   users who saw both versions: {len(both)} (assignment is sticky per user)")

            seen: dict[int, dict] = {}
            for _ in range(60):  # each call lands on one worker: ask until both have answered
                stats = get(f"{base}/stats")
                seen[stats["pid"]] = stats
                if len(seen) == 2:
                    break
            runs = sum(s["shadow"].get("3", {}).get("runs", 0) for s in seen.values())
            dropped = sum(
                s["shadow"].get("3", {}).get("dropped_queue_full", 0)
                + s["shadow"].get("3", {}).get("dropped_no_spare_capacity", 0)
                + s["shadow"].get("3", {}).get("dropped_over_budget", 0)
                for s in seen.values()
            )
            agreement = [
                s["shadow"]["3"]["label_agreement"]
                for s in seen.values()
                if s["shadow"].get("3", {}).get("label_agreement") is not None
            ]
            max_diff = max((s["shadow"].get("3", {}).get("max_abs_diff") or 0.0 for s in seen.values()), default=0.0)
            print(
                f"   shadow v3: {runs} mirrored runs, {dropped} dropped under load, label agreement with the "
                f"answering version {statistics.mean(agreement) if agreement else float('nan'):.1%}, "
                f"largest probability difference {max_diff:.3f}"
            )
            print(f"   workers that answered: {sorted(seen)}")
            if errors:
                print(f"   first error: {errors[0]}")

            switched = post(f"{base}/-/inprocserve/models/fraud/switch", {"version": 2}, token)
            switched_at = time.monotonic()
            following: set[int] = set()
            for _ in range(200):  # each call lands on one worker: ask until both serve v2 as stable
                stats = get(f"{base}/stats")
                if stats["stable"] == 2:
                    following.add(stats["pid"])
                if following >= set(seen):
                    break
                time.sleep(0.05)
            print(
                f"   admin switch to v2 (control revision {switched['revision']}, sent to worker "
                f"{switched['worker']}): workers {sorted(following)} serve it as stable "
                f"{time.monotonic() - switched_at:.2f}s later"
            )
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code: int | None = process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                code = None
        if code == 0:
            print("5. gunicorn stopped; each worker drained its queue and closed its sessions.")
        else:
            what = "did not stop within 20 s and was killed" if code is None else f"exited with status {code}"
            print(f"5. gunicorn {what}: see its log above.")
            sys.exit(1)


if __name__ == "__main__":
    main()
