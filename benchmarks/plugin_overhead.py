"""What the Flask and Django plug-ins' ``predict`` add to ``Server.predict``, for a lone caller, in the calling
thread's CPU time.

One process, one thread, no OpenTelemetry SDK, no HTTP. The plug-ins' ``predict`` reads the request's rollout
context (the user header) and time budget (the deadline header, a view's budget, the configured default)
before it calls the server; this measures that part. Each plug-in is timed inside a request as its framework
makes one:

* Flask: inside ``app.test_request_context`` (the request Flask builds from a WSGI environ), one request
  context for all calls;
* Django: a fresh ``HttpRequest`` per call (``RequestFactory``; the context is kept on the request, so a
  second call on the same request costs less), passed through the plug-in's middleware as a request is.

The calls take turns in blocks of ``--block`` (so machine drift hits them alike): ``Server.predict`` on the
plug-in's own server, the plug-in's ``predict``, and, with ``--baseline DIR`` (a folder holding other
``inprocserve_flask`` and ``inprocserve_django`` packages, e.g. ``git archive REV integrations | tar -x -C
DIR`` then the two ``src`` folders' packages moved to ``DIR``), that code's ``predict``, imported side by
side under other names on the same ``inprocserve``. With ``--headers`` every request carries ``X-User-Id``
and ``X-Request-Timeout-Ms`` (then the server also routes by user and keeps a deadline). The plug-in's
overhead is its median block's µs per call less its server's.

    python benchmarks/plugin_overhead.py [--blocks 40] [--headers] [--baseline DIR]

Writes benchmarks/results/plugin_overhead.{json,md}, with ``--headers`` plugin_overhead-headers.{json,md}
(``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import RESULTS, build_reference, input_rows, machine, machine_line

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mlp-small"
HEADERS = {"X-User-Id": "user-17", "X-Request-Timeout-Ms": "600000"}


def timed_blocks(
    calls: dict[str, tuple[Callable[[], Any], Callable[[], Any] | None]], blocks: int, block: int
) -> dict[str, list[float]]:
    """µs of thread CPU per call, one figure per block, the calls taking turns block by block; each block
    runs inside a fresh request context from its factory, if it has one (Flask: the plug-in reads its app's)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for turn in range(blocks + 1):  # the first turn warms up
        for name, (call, make_context) in calls.items():
            context = make_context() if make_context is not None else contextlib.nullcontext()
            with context:
                started = time.thread_time()
                for _ in range(block):
                    call()
                elapsed = time.thread_time() - started
            if turn:
                times[name].append(elapsed / block * 1e6)
    return times


def import_copy(package_folder: Path, scratch: Path, name: str) -> Any:
    """The package in ``package_folder`` imported as ``name`` (its relative imports follow it)."""
    shutil.copytree(package_folder, scratch / name)
    if str(scratch) not in sys.path:
        sys.path.insert(0, str(scratch))
    return importlib.import_module(name)


def flask_calls(repository: Path, feeds: dict[str, Any], baseline: Any, headers: dict[str, str]) -> tuple[Any, ...]:
    """The Flask calls to time (with the request contexts they run in), and the apps to close."""
    import inprocserve_flask
    from flask import Flask

    calls: dict[str, tuple[Callable[[], Any], Callable[[], Any] | None]] = {}
    apps = []
    for label, plugin in (("flask", inprocserve_flask), ("flask, baseline", baseline)):
        if plugin is None:
            continue
        app = Flask(label.replace(", ", "_"))
        app.config["INPROCSERVE_REPOSITORY"] = str(repository)
        plugin.Inprocserve(app)
        apps.append((plugin, app))
        with app.app_context():
            server = plugin.server._get_current_object()  # the app's own server, built now

        def request_context(app: Any = app) -> Any:
            return app.test_request_context("/predict", method="POST", headers=headers)

        calls[f"{label}: Server.predict"] = (lambda server=server: server.predict(MODEL, feeds), request_context)
        calls[f"{label}: plug-in predict"] = (lambda plugin=plugin: plugin.predict(MODEL, feeds), request_context)
    return calls, apps


def django_calls(repository: Path, feeds: dict[str, Any], baseline: Any, headers: dict[str, str]) -> dict[str, Any]:
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="benchmark-only",
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=["inprocserve_django"],
        MIDDLEWARE=["inprocserve_django.middleware.InprocserveMiddleware"],
        INPROCSERVE={"REPOSITORY": str(repository)},
        ROOT_URLCONF=[],
    )
    django.setup()
    import inprocserve_django
    from django.test import RequestFactory
    from inprocserve_django.middleware import InprocserveMiddleware

    factory = RequestFactory()
    meta = {"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()}
    calls: dict[str, tuple[Callable[[], Any], Callable[[], Any] | None]] = {}
    plugins = [("django", inprocserve_django, InprocserveMiddleware)]
    if baseline is not None:
        plugins.append(
            (
                "django, baseline",
                baseline,
                importlib.import_module(f"{baseline.__name__}.middleware").InprocserveMiddleware,
            )
        )
    for label, plugin, middleware_class in plugins:
        server = plugin.get_server()

        def through_middleware(plugin: Any = plugin, middleware_class: Any = middleware_class) -> Any:
            request = factory.post("/predict", data=b"{}", content_type="application/json", **meta)
            return middleware_class(lambda r: plugin.predict(r, MODEL, feeds))(request)

        def server_only(server: Any = server, middleware_class: Any = middleware_class) -> Any:
            request = factory.post("/predict", data=b"{}", content_type="application/json", **meta)
            return middleware_class(lambda r: server.predict(MODEL, feeds))(request)

        calls[f"{label}: Server.predict"] = (server_only, None)
        calls[f"{label}: plug-in predict"] = (through_middleware, None)
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--block", type=int, default=400, help="calls per block")
    parser.add_argument("--headers", action="store_true", help="send X-User-Id and X-Request-Timeout-Ms")
    parser.add_argument("--baseline", type=Path, help="a folder holding inprocserve_flask and inprocserve_django")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    headers = HEADERS if args.headers else {}
    scratch = Path(tempfile.mkdtemp())
    apps: list[Any] = []
    try:
        repository = scratch / "models"
        build_reference(MODEL, repository)
        feeds = {"x": input_rows(MODEL, 1)[0]}
        flask_base = django_base = None
        if args.baseline is not None:
            flask_base = import_copy(args.baseline / "inprocserve_flask", scratch, "baseline_inprocserve_flask")
            django_base = import_copy(args.baseline / "inprocserve_django", scratch, "baseline_inprocserve_django")
        calls, apps = flask_calls(repository, feeds, flask_base, headers)
        calls |= django_calls(repository, feeds, django_base, headers)
        times = timed_blocks(calls, args.blocks, args.block)
    finally:
        for plugin, app in apps:
            plugin.Inprocserve.close(app)
        for module in ("inprocserve_django", "baseline_inprocserve_django"):
            if module in sys.modules:
                sys.modules[module].reset_server()
        shutil.rmtree(scratch, ignore_errors=True)

    summary: dict[str, dict[str, float]] = {}
    for name, values in times.items():
        label = name.partition(": ")[0]
        server = statistics.median(times[f"{label}: Server.predict"])
        summary[name] = {
            "median_us": statistics.median(values),
            "p10_us": sorted(values)[len(values) // 10],
            "over_server_us": statistics.median(values) - server,
        }
        print(
            f"{name:40s} {summary[name]['median_us']:7.1f} µs per call, over Server.predict "
            f"{summary[name]['over_server_us']:5.1f}"
        )
    settings = {**vars(args), "baseline": str(args.baseline), "out": str(args.out)}
    results = {"machine": machine(), "settings": settings, "summary": summary, "blocks_us": times}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "plugin_overhead-headers" if args.headers else "plugin_overhead"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    lines = [
        "# What the plug-ins' predict adds to Server.predict (one thread, no SDK, no HTTP)",
        "",
        machine_line(results["machine"]),
        f"Model {MODEL}; {args.blocks} alternating blocks of {args.block} calls; the calling thread's CPU time per "
        "call, median block (p10 block in brackets). Django: a fresh request per call, through the plug-in's "
        "middleware (also around the Server.predict rows). "
        + ("Headers: " + ", ".join(f"`{k}: {v}`" for k, v in headers.items()) + "." if headers else "No headers."),
        "",
        "| call | µs per call | over its Server.predict |",
        "|---|---:|---:|",
    ]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['median_us']:.1f} ({s['p10_us']:.1f}) | {s['over_server_us']:.1f} |")
    if args.baseline is not None:
        lines += ["", f"Baseline: the plug-in packages in `{args.baseline}`."]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / f'{stem}.md'}")


if __name__ == "__main__":
    main()
