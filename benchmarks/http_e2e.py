"""End-to-end HTTP benchmark: inprocserve against what users would pick instead, through real servers, one run.

    python benchmarks/http_e2e.py            # full: both models, both stacks, N = 1, 8, 64, 2 rounds of 3 s
    python benchmarks/http_e2e.py --quick    # smoke run: proves the harness works (figures mean little)
    python benchmarks/http_e2e.py --otel     # as production runs: an OpenTelemetry SDK in every web worker

Two stacks, each with three variants of the same ``POST /predict`` view (benchmarks/e2e/):

* **flask** — the Flask app under gunicorn ``gthread`` (``--workers 2 --threads 16``, ``--preload``);
* **django** — an ``async def`` Django view under uvicorn (``--workers 2``, one event loop per worker).

and the variants: ``inprocserve`` (the plug-in: ``predict`` in Flask, ``await apredict`` in Django),
``naive`` (one shared ``InferenceSession`` per worker process; ``asyncio.to_thread`` in the async view) and
``remote`` (the view calls LitServe, an out-of-process model server, over loopback with a keep-alive client).
Every variant gets the same worker and thread counts, the same model files (mlp-small and mlp-large of
benchmarks/_common.py), the same JSON bodies and the same load client (benchmarks/e2e/load.py: N keep-alive
connections on one asyncio loop, closed loop). Rounds are interleaved (the variant order rotates each round);
each point starts with a warm-up that is not counted. ``/ping`` (no model) on the naive server measures what
the HTTP stack alone allows. LitServe runs in its own virtual environment, ``.venv-bench-litserve`` (made on
first use, with pip), and is paused (SIGSTOP) while other variants are measured: its inference loop polls
every millisecond even when idle.

On a 2-core machine the client shares the CPU with the server it measures: it is pinned to one core
(``--client-cpu``), and its CPU time per point is reported; a share near 1.0 means the client limited the
rate.

With ``--otel`` every web worker of every variant installs the OpenTelemetry SDK as a service would (what
``telemetry_overhead.py`` calls ``sampled``: ``ParentBased(TraceIdRatioBased(0.01))`` with a batch span
processor, a meter provider with a periodic reader, exporters that discard), when its app module is
imported, as examples/flask_fraud does (under ``--preload``, in gunicorn's master: the SDK's processor and
reader restart their threads in each forked worker). The naive and remote views make no spans or metrics of
their own, so the figures say what the library's telemetry costs next to a bare call. No web-framework
instrumentation is installed: the releases of ``opentelemetry-instrumentation-flask`` and ``-django`` on
the package index lag the instrumentation core that the project's environment holds, and the library's
request spans are then root spans, 1 % of them sampled. LitServe runs without an SDK either way.

One core per worker (docs/deployment.md): ``--variants inprocserve,inprocserve-pinned,naive,naive-pinned
--stacks flask`` adds the Flask variants again under ``inprocserve.gunicorn``'s ``pre_fork``/``post_fork``
hooks (docs/deployment.md), which keep each worker's threads on a share of the cores of its own (uvicorn has
no such hook: pinned variants run in the flask stack only), checked from ``/proc`` for every worker before
the first point. onnxruntime's default session places its own pool threads whatever the process's mask, so
a ``naive-pinned`` worker's request threads alone keep to its share. They are measured in the same rounds.

Writes benchmarks/results/http_e2e.{json,md,png}; with ``--otel``, http_e2e-otel.{json,md,png}; with pinned
variants, http_e2e-pinned(-otel).{json,md,png}.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from _common import MODELS, RESULTS, build_reference, input_rows, machine, machine_line, write_json
from e2e.load import LoadPoint, json_rows, run_load
from e2e.processes import ServerProcess, free_port

HERE = Path(__file__).parent
E2E = HERE / "e2e"
ROOT = HERE.parent
VARIANTS = ("inprocserve", "naive", "remote")
PINNED = "-pinned"  # a Flask variant under the one-core-per-worker hook (benchmarks/e2e/gunicorn_conf.py)
PINNED_VARIANTS = tuple(f"{variant}{PINNED}" for variant in ("inprocserve", "naive"))
STACKS = ("flask", "django")
LITSERVE_REQUIREMENTS = ("litserve>=0.2.19", "onnxruntime>=1.17.3", "numpy>=1.24")
SETTLE_S = 0.3  # onnxruntime's default sessions spin after a run; let them park before the next variant


def ensure_litserve(venv: Path) -> Path:
    """The Python of a virtual environment holding LitServe, made (once) with pip: LitServe's dependencies
    (FastAPI, pyzmq, uvicorn[standard]) stay out of the project's environment."""
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = "\n".join(LITSERVE_REQUIREMENTS)
    if stamp.exists() and stamp.read_text() == wanted and python.exists():
        return python
    print(f"   installing LitServe into {venv} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *LITSERVE_REQUIREMENTS], check=True)
    stamp.write_text(wanted)
    return python


def start_litserve(python: Path, model_path: Path, name: str, folder: Path, args: argparse.Namespace) -> ServerProcess:
    port = free_port()
    command = [str(python), str(E2E / "model_server.py"), str(model_path), "--name", name, "--port", str(port)]
    command += ["--max-batch-size", str(args.litserve_max_batch), "--batch-timeout-s", str(args.litserve_timeout_s)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    server = ServerProcess("litserve", command, port=port, env=env, cwd=E2E, log=folder / f"litserve-{name}.log")
    server.wait_ready("/health")
    return server


def start_app(
    stack: str, variant: str, model: str, repository: Path, remote_url: str, folder: Path, args: argparse.Namespace
) -> ServerProcess:
    port = free_port()
    env = {
        **os.environ,
        "E2E_VARIANT": variant.removesuffix(PINNED),
        "E2E_PIN_WORKERS": "1" if variant.endswith(PINNED) else "",
        "E2E_MODEL": model,
        "E2E_REPOSITORY": str(repository),
        "E2E_REMOTE_URL": remote_url,
        "E2E_THREADS": str(args.flask_threads),
        # with --otel, benchmarks/ too: the apps install the SDK with telemetry_overhead.install_sdk
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(E2E), str(HERE) if args.otel else "", os.environ.get("PYTHONPATH", "")) if p
        ),
        "E2E_OTEL": "1" if args.otel else "",
    }
    if stack == "flask":
        command = [sys.executable, "-m", "gunicorn", "--config", str(E2E / "gunicorn_conf.py"), "--preload"]
        command += ["--workers", str(args.flask_workers), "--threads", str(args.flask_threads)]
        # --timeout 0: the master never kills a worker for a missed heartbeat (workers can be busy for long)
        command += ["--bind", f"127.0.0.1:{port}", "--timeout", "0", "flask_app:app"]
    else:
        command = [sys.executable, "-m", "uvicorn", "--workers", str(args.uvicorn_workers), "--host", "127.0.0.1"]
        command += ["--port", str(port), "--log-level", "warning", "--no-access-log", "django_app:application"]
    server = ServerProcess(
        f"{stack}-{variant}", command, port=port, env=env, cwd=E2E, log=folder / f"{stack}-{variant}-{model}.log"
    )
    try:
        server.wait_ready("/ping")
        workers = args.flask_workers if stack == "flask" else args.uvicorn_workers
        check_workers(server, workers, installed=args.otel)
        if stack == "flask":
            check_cores(server, variant)
    except BaseException:
        server.stop()  # (not left serving after the harness gave up)
        raise
    return server


def threads_cores(pid: int) -> dict[int, frozenset[int]]:
    """The cores each thread of process ``pid`` may use, by thread id."""
    found: dict[int, frozenset[int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            found[int(tid)] = frozenset(os.sched_getaffinity(int(tid)))
        except OSError:  # exited meanwhile
            continue
    return found


def check_cores(server: ServerProcess, variant: str) -> None:
    """Raise unless every worker of the gunicorn master ``server`` keeps to the cores its variant says: a
    pinned worker's main thread to a share of its own (every thread of inprocserve's; onnxruntime's default
    session places its own pool threads, so a naive worker's are not checked), a free one's to every core."""
    every = frozenset(os.sched_getaffinity(0))
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    shares = []
    for pid in map(int, children):
        threads = threads_cores(pid)
        main = threads[pid]
        if not variant.endswith(PINNED):
            if main != every:
                raise RuntimeError(f"{server.name}: free worker {pid} keeps to cores {sorted(main)}")
            continue
        if len(every) > 1 and len(children) > 1 and main == every:  # (a lone worker's share is every core)
            raise RuntimeError(f"{server.name}: pinned worker {pid} keeps to every core")
        if variant.startswith("inprocserve") and set(threads.values()) != {main}:
            raise RuntimeError(f"{server.name}: worker {pid}'s threads keep to {sorted(map(sorted, threads.values()))}")
        shares.append(main)
    if len(shares) <= len(every) and any(a & b for i, a in enumerate(shares) for b in shares[i + 1 :]):
        raise RuntimeError(f"{server.name}: pinned workers share cores: {[sorted(share) for share in shares]}")


def check_workers(server: ServerProcess, workers: int, *, installed: bool) -> None:
    """Ask ``GET /sdk`` (new connections, so the workers take turns) until every worker answered, and raise
    unless each runs with the OpenTelemetry SDK's providers exactly when ``--otel`` asked for them."""
    seen: dict[int, dict[str, str]] = {}
    for _ in range(200):  # the kernel spreads new connections over the workers: bounded, not guaranteed
        with urllib.request.urlopen(server.url + "/sdk", timeout=5) as response:
            answer = json.loads(response.read())
        seen[answer["pid"]] = answer
        if len(seen) >= workers:
            break
    for answer in seen.values():
        sdk = all(answer[kind].startswith("opentelemetry.sdk.") for kind in ("tracer", "meter"))
        if sdk != installed:
            raise RuntimeError(f"{server.name}: worker {answer['pid']} runs {answer}, expected the SDK: {installed}")
    if len(seen) < workers:
        print(f"   {server.name}: {len(seen)} of {workers} workers answered /sdk; those were checked", flush=True)


def stack_versions() -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "gunicorn": version("gunicorn"),
        "flask": version("flask"),
        "uvicorn": version("uvicorn"),
        "uvicorn_http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "uvicorn_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "django": version("django"),
        "aiohttp": version("aiohttp"),
        "urllib3": version("urllib3"),
    }


def measure_stack(
    stack: str,
    model: str,
    repository: Path,
    litserve: ServerProcess | None,
    folder: Path,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Every N and round for one stack and model: the three variants interleaved, and the /ping floor."""
    variants = [v for v in args.variants if v != "remote" or litserve is not None]
    remote_url = litserve.url if litserve is not None else ""
    rows = input_rows(model, max(args.connections), seed=3)
    bodies: list[bytes | None] = list(json_rows(rows))
    reference = ort.InferenceSession(str(repository / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = [reference.run(None, {"x": row})[0] for row in rows]

    def check(index: int, raw: bytes) -> None:
        y = np.asarray(json.loads(raw)["y"], np.float32)
        if y.shape != expected[index].shape or not np.allclose(y, expected[index], rtol=1e-4, atol=1e-5):
            raise AssertionError(f"{stack}/{model}: an answer differs from onnxruntime's for input {index}")

    servers: dict[str, ServerProcess] = {}
    points: list[dict[str, Any]] = []
    try:
        for variant in variants:
            servers[variant] = start_app(stack, variant, model, repository, remote_url, folder, args)
        for variant in variants:  # every worker builds what it needs before the first measured point
            activate(variant, litserve)
            run_load(servers[variant].port, "/predict", bodies, connections=8, seconds=0.1, warmup_s=args.warmup)
        for connections in args.connections:
            point: dict[str, Any] = {"stack": stack, "model": model, "connections": connections, "rounds": {}}
            point["rounds"] = {variant: [] for variant in [*variants, "ping"]}
            for round_index in range(args.rounds):
                order = variants[round_index % len(variants) :] + variants[: round_index % len(variants)]
                for variant in [*order, "ping"]:
                    # (/ping on the naive server where there is one: its view is the same on every variant)
                    target = servers[variant if variant != "ping" else "naive" if "naive" in servers else "inprocserve"]
                    activate(variant, litserve)
                    time.sleep(SETTLE_S)
                    result = pinned_load(
                        args.client_cpu,
                        target.port,
                        "/ping" if variant == "ping" else "/predict",
                        [None] if variant == "ping" else bodies,
                        connections=connections,
                        seconds=args.seconds,
                        warmup_s=args.warmup,
                        check=None if variant == "ping" else check,
                    )
                    if variant != "ping" and result.checked == 0:
                        raise RuntimeError(
                            f"{stack}/{variant}/{model} N={connections}: no answer was checked; "
                            f"{result.errors} errors, the first: {result.first_error}\n{target.tail()}"
                        )
                    point["rounds"][variant].append(result)
            point["summary"] = summarize(point["rounds"], variants)
            points.append(point)
            print_point(point, variants)
    finally:
        if litserve is not None:
            litserve.pause()
        for server in servers.values():
            server.stop()
    return points


def activate(variant: str, litserve: ServerProcess | None) -> None:
    """Run LitServe only while the remote variant is measured (paused, it costs nothing)."""
    if litserve is None:
        return
    if variant == "remote":
        litserve.resume()
    else:
        litserve.pause()


def pinned_load(client_cpu: int, *args: Any, **kwargs: Any) -> LoadPoint:
    """``run_load`` with this process pinned to one core (servers started before keep every core)."""
    every = os.sched_getaffinity(0)
    if client_cpu < 0 or len(every) < 2:
        return run_load(*args, **kwargs)
    os.sched_setaffinity(0, {sorted(every)[client_cpu % len(every)]})
    try:
        return run_load(*args, **kwargs)
    finally:
        os.sched_setaffinity(0, every)


def summarize(rounds: dict[str, list[LoadPoint]], variants: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for variant in [*variants, "ping"]:
        results = rounds[variant]
        rates = [r.throughput for r in results]
        summary[variant] = {
            "rps": statistics.median(rates),
            "p50_ms": statistics.median(r.p50_ms for r in results),
            "p99_ms": statistics.median(r.p99_ms for r in results),
            "spread": (max(rates) - min(rates)) / statistics.median(rates) if len(rates) > 1 and any(rates) else 0.0,
            "errors": sum(r.errors for r in results),
            "client_cpu_share": max(r.client_cpu_share for r in results),
        }
    base = summary.get("inprocserve", {}).get("rps")
    for variant in variants:
        summary[variant]["x_inprocserve"] = summary[variant]["rps"] / base if base else float("nan")
    return summary


def print_point(point: dict[str, Any], variants: list[str]) -> None:
    s = point["summary"]
    parts = [
        f"{v} {s[v]['rps']:>7,.0f} req/s p50 {s[v]['p50_ms']:6.2f} p99 {s[v]['p99_ms']:7.2f} ms"
        + (f" (x{s[v]['x_inprocserve']:.2f})" if v != "inprocserve" else "")
        for v in variants
    ]
    client = max(s[v]["client_cpu_share"] for v in [*variants, "ping"])
    errors = sum(s[v]["errors"] for v in variants)
    print(
        f"   {point['stack']:<6} {point['model']:<9} N={point['connections']:<3} "
        + " | ".join(parts)
        + f" | /ping {s['ping']['rps']:,.0f} req/s | client cpu <= {client:.2f} | errors {errors}",
        flush=True,
    )


def result_name(settings: dict[str, Any]) -> str:
    pinned = any(variant.endswith(PINNED) for variant in settings["variants"])
    return "http_e2e" + ("-pinned" if pinned else "") + ("-otel" if settings.get("otel") else "")


def write_markdown(results: dict[str, Any]) -> Path:
    m, settings, versions = results["machine"], results["settings"], results["versions"]
    variants = [v for v in settings["variants"] if v != "remote" or results["litserve"]]
    lines = [
        "# End-to-end HTTP benchmark" + (", OpenTelemetry SDK installed" if settings.get("otel") else ""),
        "",
        f"{machine_line(m)} Load average before the run: {results['load_before']}, after: {results['load_after']}.",
        f"Command: `{results.get('command', 'python benchmarks/http_e2e.py')}`.",
        f"Settings: {settings['seconds']} s per point after a {settings['warmup']} s warm-up, {settings['rounds']} "
        "round(s), variants interleaved (order rotated each round); medians over rounds (spread = (max-min)/median "
        'of req/s). One-row JSON requests `{"x": [[...]]}`, N keep-alive connections in a closed loop from one '
        f"asyncio client pinned to one core (`--client-cpu {settings['client_cpu']}`).",
        "",
        f"- **flask**: gunicorn {versions['gunicorn']} `gthread`, {settings['flask_workers']} workers x "
        f"{settings['flask_threads']} threads, `--preload`, Flask {versions['flask']}.",
        f"- **django**: uvicorn {versions['uvicorn']} ({versions['uvicorn_loop']}, {versions['uvicorn_http']}), "
        f"{settings['uvicorn_workers']} workers, Django {versions['django']} `async def` view.",
        "- `inprocserve`: the plug-in with default settings (`predict` in Flask, `await apredict` in Django). "
        "`naive`: one shared onnxruntime session per worker process with onnxruntime's defaults (Django: "
        "`await asyncio.to_thread(session.run, ...)`). `remote`: the view calls "
        + (
            f"LitServe {results['litserve']['version']} (one inference worker, batching up to "
            f"{settings['litserve_max_batch']} rows within {settings['litserve_timeout_s'] * 1000:g} ms, "
            "`fast_queue`) over loopback: urllib3 pool in Flask, aiohttp in Django."
            if results["litserve"]
            else f"(not measured in this run: {results.get('litserve_skipped') or 'not asked for'})."
        ),
        "- `x inprocserve`: the variant's req/s divided by inprocserve's (below 1: slower than inprocserve). "
        "`/ping`: a view that touches no model, on the same server: what the HTTP stack alone allows. "
        "`client`: the load client's CPU seconds per wall second (1.0 = one full core: the client was the limit).",
        *(
            [
                "- `-pinned`: the same Flask variant with `inprocserve.gunicorn`'s `pre_fork` and `post_fork` hooks "
                '(docs/deployment.md, "One core per worker"): each worker and the threads it starts keep to a '
                "share of the cores of its own (checked for every thread of inprocserve's workers; onnxruntime's "
                "default session places its own pool threads, so a naive worker's request threads alone keep to "
                "it). The load client keeps to its own core, which one of the workers then shares."
            ]
            if any(v.endswith(PINNED) for v in variants)
            else []
        ),
        *(
            [
                "- OpenTelemetry SDK in every web worker of every variant: `ParentBased(TraceIdRatioBased(0.01))` "
                "with a batch span processor, a meter provider with a periodic reader (5 s), exporters that "
                "discard; no web-framework instrumentation (the library's request spans are roots, 1 % sampled). "
                "Only inprocserve makes spans and metrics; LitServe runs without an SDK."
            ]
            if settings.get("otel")
            else []
        ),
        "",
    ]
    for stack in settings["stacks"]:
        lines += [
            f"## {stack}",
            "",
            "| model | N | "
            + " | ".join(f"{v} req/s" for v in variants)
            + " | "
            + " | ".join(f"{v} x inprocserve" for v in variants if v != "inprocserve")
            + " | p50 ms ("
            + " / ".join(variants)
            + ") | p99 ms ("
            + " / ".join(variants)
            + ") | /ping req/s | client | spread | errors |",
            "|---|---:|" + "---:|" * (2 * len(variants) - 1) + "---:|---:|---:|---:|---:|---:|",
        ]
        for point in results["points"]:
            if point["stack"] != stack:
                continue
            s = point["summary"]
            lines.append(
                f"| {point['model']} | {point['connections']} | "
                + " | ".join(f"{s[v]['rps']:,.0f}" for v in variants)
                + " | "
                + " | ".join(f"{s[v]['x_inprocserve']:.2f}" for v in variants if v != "inprocserve")
                + " | "
                + " / ".join(f"{s[v]['p50_ms']:.2f}" for v in variants)
                + " | "
                + " / ".join(f"{s[v]['p99_ms']:.2f}" for v in variants)
                + f" | {s['ping']['rps']:,.0f}"
                + f" | {max(s[v]['client_cpu_share'] for v in [*variants, 'ping']):.2f}"
                + " | "
                + " / ".join(f"{s[v]['spread']:.0%}" for v in variants)
                + f" | {sum(s[v]['errors'] for v in variants)} |"
            )
        lines.append("")
    path = RESULTS / f"{result_name(settings)}.md"
    path.write_text("\n".join(lines))
    return path


def write_plot(results: dict[str, Any]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("   matplotlib is not installed: no plot (pip install -e '.[bench]')")
        return None
    settings = results["settings"]
    variants = [v for v in settings["variants"] if v != "remote" or results["litserve"]]
    panels = [(stack, model) for stack in settings["stacks"] for model in settings["models"]]
    figure, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7), squeeze=False)
    colours = {
        "inprocserve": "tab:blue",
        "naive": "tab:orange",
        "remote": "tab:green",
        "inprocserve-pinned": "tab:purple",
        "naive-pinned": "tab:red",
        "ping": "grey",
    }
    for column, (stack, model) in enumerate(panels):
        points = [p for p in results["points"] if p["stack"] == stack and p["model"] == model]
        if not points:
            continue
        n = [p["connections"] for p in points]
        for variant in [*variants, "ping"]:
            style = {"color": colours[variant], "marker": "o", "linestyle": "--" if variant == "ping" else "-"}
            label = "/ping (no model)" if variant == "ping" else variant
            axes[0][column].plot(n, [p["summary"][variant]["rps"] for p in points], label=label, **style)
            if variant != "ping":
                axes[1][column].plot(n, [p["summary"][variant]["p99_ms"] for p in points], label=label, **style)
        axes[0][column].set_title(f"{stack}, {model}")
        axes[0][column].set_ylabel("requests/s")
        axes[1][column].set_ylabel("p99 latency, ms")
        for row in (0, 1):
            axes[row][column].set_xscale("log", base=2)
            axes[row][column].set_xticks(n, [str(x) for x in n])
            axes[row][column].set_xlabel("concurrent connections")
            axes[row][column].grid(alpha=0.3)
        axes[0][column].set_yscale("log")
        axes[1][column].set_yscale("log")
    axes[0][0].legend(fontsize=8)
    sdk = ", OpenTelemetry SDK installed" if settings.get("otel") else ""
    figure.suptitle(f"End to end over HTTP{sdk}, {results['machine']['cores']} cores, {results['machine']['date']}")
    figure.tight_layout()
    path = RESULTS / f"{result_name(settings)}.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS))
    parser.add_argument("--stacks", type=lambda s: s.split(","), default=list(STACKS))
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
    parser.add_argument("--connections", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per point and round")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each point, not counted")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--flask-workers", type=int, default=2)
    parser.add_argument("--flask-threads", type=int, default=16)
    parser.add_argument("--uvicorn-workers", type=int, default=2)
    parser.add_argument("--litserve-max-batch", type=int, default=64)
    parser.add_argument("--litserve-timeout-s", type=float, default=0.001)
    parser.add_argument(
        "--client-cpu",
        type=int,
        default=len(os.sched_getaffinity(0)) - 1,
        help="the core the load client is pinned to (default: the last one; -1: not pinned)",
    )
    parser.add_argument("--bench-venv", type=Path, default=ROOT / ".venv-bench-litserve")
    parser.add_argument(
        "--otel", action="store_true", help="install the OpenTelemetry SDK in every web worker (1 %% sampling)"
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s at N = 1 and 8: proves the harness runs")
    parser.add_argument("--render", type=Path, help="only write the table and plot again from this JSON result")
    args = parser.parse_args()
    if args.render:
        rendered = json.loads(args.render.read_text())
        print(f"wrote {write_markdown(rendered)}")
        print(f"wrote {write_plot(rendered)}")
        return
    if args.quick:  # shorter defaults; what is given on the command line still wins
        quick = {"connections": [1, 8], "seconds": 1.0, "warmup": 0.5, "rounds": 1}
        for name, value in quick.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    unknown = (set(args.models) - set(MODELS)) | (set(args.stacks) - set(STACKS))
    unknown |= set(args.variants) - set(VARIANTS) - set(PINNED_VARIANTS)
    if unknown or "inprocserve" not in args.variants:
        parser.error(f"unknown names {sorted(unknown)}; the variants must include inprocserve")
    if any(v.endswith(PINNED) for v in args.variants) and args.stacks != ["flask"]:
        parser.error("pinned variants need gunicorn's post_fork hook, which uvicorn lacks: give --stacks flask")

    python, skipped = None, None
    if "remote" in args.variants:
        try:
            python = ensure_litserve(args.bench_venv)
        except (subprocess.CalledProcessError, OSError) as exc:  # no package index here: measure the rest
            skipped = f"LitServe could not be installed into {args.bench_venv}: {exc}"
            print(f"   {skipped}; the remote variant is left out", flush=True)
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "versions": stack_versions(),
        "litserve": None,
        "litserve_skipped": skipped,
        "command": " ".join(["python benchmarks/http_e2e.py", *sys.argv[1:]]),
        "load_before": load_average(),
        "points": [],
    }
    if python is not None:
        out = subprocess.run(
            [str(python), "-c", "import litserve; print(litserve.__version__)"], capture_output=True, text=True
        )
        results["litserve"] = {"version": out.stdout.strip(), "venv": str(args.bench_venv)}
    with tempfile.TemporaryDirectory(prefix="http-e2e-") as folder_name:
        folder = Path(folder_name)
        repository = folder / "models"
        for model in args.models:
            model_path = build_reference(model, repository)
            litserve = start_litserve(python, model_path, model, folder, args) if python is not None else None
            try:
                if litserve is not None:
                    litserve.pause()
                for stack in args.stacks:
                    results["points"] += measure_stack(stack, model, repository, litserve, folder, args)
            finally:
                if litserve is not None:
                    litserve.stop()
    results["load_after"] = load_average()
    print(f"wrote {write_json(result_name(results['settings']), results)}")
    print(f"wrote {write_markdown(results)}")
    plot = write_plot(results)
    if plot is not None:
        print(f"wrote {plot}")


if __name__ == "__main__":
    main()
