"""What a rollout driven by feature flags costs a lone ``predict``, by where its flags come from.

One process, one calling thread, no OpenTelemetry SDK, mlp-small (two identical versions: a 50 % canary of
version 2). Each flag source has a server of its own; the calls take turns in blocks of ``--block`` calls
(so machine drift hits them alike), and each figure is the median block's wall time per call and its
process CPU time per call (every thread: a blocking provider's flags are evaluated on the flag reader's
worker threads, which the caller waits for). Sources:

* ``no rollout``: the same model with no rollout, for reference;
* ``no provider``: the canary as configured, no flag provider;
* ``in-memory``: ``InMemoryFlags`` holding the canary's percentage;
* ``env``: ``EnvFlags``, the percentage in ``INPROCSERVE_FLAG_MLP_SMALL_CANARY_PERCENT``;
* ``file``: ``FileFlags`` on a TOML file holding it;
* ``flagd``: OpenFeature's flagd provider evaluating a flags file in process (its ``FILE`` resolver, no
  flagd server), through ``OpenFeatureFlags`` with its defaults (static and absent flags remembered for a
  second; flagd's in-process engine judged not to block: read on the caller's thread);
* ``flagd, reuse_static_s=0, blocking=True``: every flag evaluated for every request, on a worker thread
  (what every request cost before flags were remembered and in-process providers recognized);
* ``flagd, targeted``: the canary's percentage has a targeting rule (evaluated for every request), the
  other flags are remembered; with the defaults, on the caller's thread;
* ``flagd, targeted, blocking=True``: the same, handed to a worker thread, as a provider that may wait on
  the network is (flagd's ``RPC`` resolver, or any provider the library does not know).

With ``--baseline DIR`` (a folder holding another ``inprocserve`` package, e.g. ``git archive REV
inprocserve | tar -x -C DIR``) that code's servers take their turns too, for every source but the two with
options (its ``OpenFeatureFlags`` with its defaults).

Then each source's decision alone: its server's router asked what ``predict`` asks it (``Router.decide``,
internal), for the same users, in blocks of five times ``--block`` decisions taking turns likewise.

    python benchmarks/flag_overhead.py [--blocks 10] [--block 300] [--baseline DIR]

Writes benchmarks/results/flag_overhead.{json,md} (``--out`` elsewhere). Needs ``openfeature-provider-flagd``
(in the project's test dependencies).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import block_arguments, build_reference, import_baseline, input_rows, machine_line, with_run, write_json

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mlp-small"
DECISIONS_PER_CALL = 5  # decisions timed per block, for each predict of a block (a decision is cheaper)
STATIC = {"state": "ENABLED", "defaultVariant": "half", "variants": {"half": 50, "all": 100}}
# staff get everyone's canary; the others a 50 % one: a rule evaluated for every request
TARGETED = STATIC | {"targeting": {"if": [{"==": [{"var": "plan"}, "staff"]}, "all", "half"]}}


def flagd_client(folder: Path, name: str, percent_flag: dict[str, Any]) -> Any:
    """An OpenFeature client of its own domain, served by flagd's in-process engine on a flags file."""
    from openfeature import api
    from openfeature.contrib.provider.flagd import FlagdProvider
    from openfeature.contrib.provider.flagd.config import ResolverType

    path = folder / f"{name}.json"
    path.write_text(json.dumps({"flags": {f"{MODEL}.canary.percent": percent_flag}}))
    api.set_provider_and_wait(
        FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(path)), domain=name
    )
    return api.get_client(name)


def sources(package: Any, folder: Path, *, baseline: bool) -> dict[str, Any]:
    """Each source's flag provider (None: no provider), built from ``package``."""
    flags_file = folder / "flags.toml"
    flags_file.write_text(f'["{MODEL}".canary]\npercent = 50\n')
    made: dict[str, Any] = {
        "no provider": None,
        "in-memory": package.InMemoryFlags({f"{MODEL}.canary.percent": 50}),
        "env": package.EnvFlags(),  # (the variable is set by main)
        "file": package.FileFlags(flags_file),
        "flagd": package.OpenFeatureFlags(flagd_client(folder, f"static-{baseline}", STATIC)),
        "flagd, targeted": package.OpenFeatureFlags(flagd_client(folder, f"targeted-{baseline}", TARGETED)),
    }
    if not baseline:
        targeted = flagd_client(folder, "targeted", TARGETED)
        made |= {
            "flagd, reuse_static_s=0, blocking=True": package.OpenFeatureFlags(
                flagd_client(folder, "every-read", STATIC), reuse_static_s=0, blocking=True
            ),
            "flagd, targeted, blocking=True": package.OpenFeatureFlags(targeted, blocking=True),
        }
    return made


def source_calls(
    package: Any, repository: Path, folder: Path, servers: list[Any], *, baseline: bool
) -> tuple[dict[str, Callable[[], Any]], dict[str, Callable[[], Any]]]:
    """Per flag source, on servers of ``package`` (appended to ``servers`` for closing): one ``predict``,
    and one decision of the server's router alone (what ``predict`` asks it, for the same users)."""
    every = package.VersionPolicy.all()
    canary = package.ModelConfig(
        rollout=package.RolloutConfig(strategy="canary", stable=1, canary=package.CanaryConfig(version=2, percent=50)),
        version_policy=every,
    )
    x = {"x": input_rows(MODEL, 1, seed=1)[0]}
    users = itertools.cycle([{"user_id": f"user-{i}", "plan": "free"} for i in range(1000)])
    calls: dict[str, Callable[[], Any]] = {}
    decisions: dict[str, Callable[[], Any]] = {}
    if not baseline:
        plain = package.Server(repository, config=package.ModelConfig(version_policy=every))
        servers.append(plain)
        calls["no rollout"] = lambda: plain.predict(MODEL, x)
    for name, flags in sources(package, folder, baseline=baseline).items():
        server = package.Server(repository, config=canary, flags=flags)
        servers.append(server)
        for version in (1, 2):  # each version adopts its runners (a process's first request: the full way)
            server.predict(MODEL, x, version=version)
        calls[name] = (lambda s: lambda: s.predict(MODEL, x, context=next(users)))(server)
        routes = server._registry.routes[MODEL]  # (internal: the router that predict asks, nothing else)
        decisions[name] = (lambda r: lambda: r.router.decide(r.versions, r.default.version, next(users)))(routes)
    return calls, decisions


def timed_blocks(calls: dict[str, Callable[[], Any]], blocks: int, block: int) -> dict[str, list[tuple[float, float]]]:
    """(wall µs, process CPU µs) per call, one pair per block, the calls taking turns block by block."""
    for call in calls.values():
        for _ in range(block):
            call()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    for _ in range(blocks):
        for name, call in calls.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(block):
                call()
            times[name].append(((time.perf_counter() - wall) / block * 1e6, (time.process_time() - cpu) / block * 1e6))
    return times


def main() -> None:
    args = block_arguments(__doc__, blocks=10, block=300)
    try:
        import openfeature.contrib.provider.flagd  # noqa: F401
    except ImportError:
        sys.exit(
            "flag_overhead.py needs openfeature-provider-flagd (make install puts it in the project's environment)"
        )
    sys.path.insert(0, str(ROOT))
    import inprocserve

    os.environ[f"INPROCSERVE_FLAG_{MODEL.replace('-', '_').upper()}_CANARY_PERCENT"] = "50"  # for EnvFlags

    scratch = Path(tempfile.mkdtemp())
    servers: list[Any] = []
    try:
        repository = scratch / "models"
        build_reference(MODEL, repository)
        shutil.copytree(repository / MODEL / "1", repository / MODEL / "2")
        calls, decisions = source_calls(inprocserve, repository, scratch, servers, baseline=False)
        if args.baseline is not None:
            package = import_baseline(args.baseline, scratch)
            before, decided_before = source_calls(package, repository, scratch, servers, baseline=True)
            calls |= {f"{name}, baseline": call for name, call in before.items()}
            decisions |= {f"{name}, baseline": call for name, call in decided_before.items()}
        times = timed_blocks(calls, args.blocks, args.block)
        decision_times = timed_blocks(decisions, args.blocks, DECISIONS_PER_CALL * args.block)
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(scratch, ignore_errors=True)

    wall = {name: statistics.median(w for w, _ in values) for name, values in times.items()}
    cpu = {name: statistics.median(c for _, c in values) for name, values in times.items()}
    decision_wall = {name: statistics.median(w for w, _ in values) for name, values in decision_times.items()}
    results = with_run(
        args,
        median_wall_us=wall,
        median_cpu_us=cpu,
        blocks_us=times,
        decision_median_wall_us=decision_wall,
        decision_blocks_us=decision_times,
    )
    write_json("flag_overhead", results, args.out)
    lines = [
        "# What a flag-driven rollout costs a lone predict, by flag source (one thread, no SDK)",
        "",
        machine_line(results["machine"]),
        f"Model {MODEL}, a 50 % canary; {args.blocks} alternating blocks of {args.block} calls; per call, median "
        "block: wall time, and process CPU time (all threads).",
        "",
        "| flag source | wall µs | CPU µs | wall over no rollout, µs |",
        "|---|---:|---:|---:|",
    ]
    for name in calls:
        lines.append(f"| {name} | {wall[name]:.1f} | {cpu[name]:.1f} | {wall[name] - wall['no rollout']:+.1f} |")
    lines += [
        "",
        "The decision alone: the server's router asked what `predict` asks it (`Router.decide`, the same users),",
        f"{args.blocks} alternating blocks of {DECISIONS_PER_CALL * args.block} decisions; per decision, median "
        "block wall time.",
        "",
        "| flag source | decision µs |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {decision_wall[name]:.1f} |" for name in decisions]
    if args.baseline is not None:
        lines += ["", f"Baseline: the package in `{args.baseline}`."]
    (args.out / "flag_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
