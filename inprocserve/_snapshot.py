"""The JSON-ready status of a server (``Server.status()``) and the observable gauges it feeds."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from ._control import worker_identity
from ._handoff import handoff_cost_s
from ._operations import Operations
from ._ort_rules import onnxruntime_version
from ._registry import Registry

__all__ = ["gauge_source", "server_status"]


def server_status(
    registry: Registry, operations: Operations, shadow_status: Callable[[str], Any], *, include_paths: bool
) -> dict[str, Any]:
    """See ``Server.status``: every model and version, the worker, and the control revision it follows.

    Read without the registry's lifecycle lock, from copies of its tables: a hot reload holds that lock
    while it builds and warms up a version's sessions, or drains an old one (seconds for a large model),
    and readiness probes must answer meanwhile. A version being loaded shows once it is loaded."""
    snapshot = {
        "closed": registry.closed,
        "repository": None if registry.repository is None else str(registry.repository),
        "onnxruntime": onnxruntime_version(),
        "thread_handoff_us": round(handoff_cost_s() * 1e6, 1),
        "worker": worker_identity(),
        "control": {
            **{key: value for key, value in registry.control.to_dict().items() if key != "models"},
            "file": operations.control_path,
            "interval_s": operations.control_interval_s,
            "error": operations.control_error,
        },
        "models": _models_status(registry, shadow_status),
    }
    return snapshot if include_paths else _without_paths(snapshot, _known_paths(registry))


def _known_paths(registry: Registry) -> list[str]:
    """Every file-system path status may quote, longest first (a folder must not eat part of its file)."""
    paths = {str(registry.repository)} if registry.repository is not None else set()
    if registry.repository is not None:
        paths.add(str(registry.repository.resolve()))
    for versions in list(registry.loaded.values()):
        for model_version in list(versions.values()):
            paths.update({str(model_version.path), str(model_version.path.parent.parent)})
    return sorted(paths, key=len, reverse=True)


def _models_status(registry: Registry, shadow_status: Callable[[str], Any]) -> dict[str, Any]:
    """The ``models`` part of ``Server.status()``: every model, its versions, their state and errors (each
    table copied in one step, so a lifecycle change on another thread never breaks the iteration)."""
    models: dict[str, Any] = {}
    loaded, failures, config_errors = dict(registry.loaded), dict(registry.failures), dict(registry.config_errors)
    names = set(loaded) | set(failures) | set(config_errors)
    for name in sorted(names):
        routes = registry.routes.get(name)
        versions: dict[str, Any] = {}
        for number, failure in list(failures.get(name, {}).items()):
            versions[str(number)] = {"state": "failed", "error": failure.error}
        held = dict(registry.incompatible.get(name, {}))
        unhealthy: dict[str, str] = {}
        for number, model_version in sorted(loaded.get(name, {}).items()):
            entry = model_version.status()
            if entry["health"] is not None and routes is not None and number in routes.versions:
                unhealthy[str(number)] = entry["health"]
            reload_failure = failures.get(name, {}).get(number)  # its files changed and loading them failed
            entry["reload_error"] = None if reload_failure is None else reload_failure.error
            entry["serving"] = routes is not None and number in routes.versions
            entry["compatible"] = number not in held
            entry["incompatibilities"] = list(held.get(number, ()))
            versions[str(number)] = entry
        router = registry.routers.get(name)
        state = registry.control.models.get(name)
        stable = None if router is None or routes is None else router.stable_alias
        configured = stable if stable is not None or router is None else router.config.stable
        answering = (  # the version that answers default traffic
            configured
            if routes is not None and configured in routes.versions
            else (None if routes is None else routes.default.version)
        )
        models[name] = {
            "default_version": None if routes is None else routes.default.version,
            "stable_version": stable
            if routes is not None and stable in routes.versions
            else (None if routes is None else routes.default.version),
            "control": None if state is None else state.to_dict(),
            # Servable, and the version answering default traffic can take work (a remote one whose
            # server is down cannot); ``unhealthy``: serving versions that cannot, and why.
            "answering_version": answering,
            "ready": routes is not None and str(answering) not in unhealthy,
            "unhealthy": unhealthy,
            "config_error": config_errors.get(name),
            "versions": versions,
            "rollout": None if router is None else router.status(),
            "shadow": shadow_status(name),
        }
    return models


_PATH_KEYS = frozenset({"path", "repository", "file", "folder", "optimized_path", "inputs_file"})


def _without_paths(value: Any, paths: list[str]) -> Any:
    """``value`` with every path-valued key dropped and every known path in a string replaced."""
    if isinstance(value, dict):
        return {key: _without_paths(item, paths) for key, item in value.items() if key not in _PATH_KEYS}
    if isinstance(value, list | tuple):
        return [_without_paths(item, paths) for item in value]
    if isinstance(value, str):
        for path in paths:
            if path in value:
                value = value.replace(path, "<path>")
        return value
    return value


def gauge_source(registry_ref: weakref.ref[Registry]) -> Callable[[], list[tuple[str, float, dict[str, Any]]]]:
    """Queue depth and in-flight requests of every serving version, for the observable gauges."""

    def observe() -> list[tuple[str, float, dict[str, Any]]]:
        registry = registry_ref()
        if registry is None:
            return []
        values = []
        for name, routes in list(registry.routes.items()):
            for number, model_version in routes.versions.items():
                batcher = model_version.batcher
                if batcher is None:
                    continue
                attributes = {"inprocserve.model.name": name, "inprocserve.model.version": number}
                values.append(("queue", float(batcher.queued_rows), attributes))
                values.append(("in_flight", float(batcher.in_flight), attributes))
                values.extend(model_version.drift_observations())
                values.extend(model_version.memory_observations())
        return values

    return observe
