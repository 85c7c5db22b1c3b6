"""The JSON-ready status of a server (``Server.status()``) and the observable gauges it feeds."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import weakref
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from ._control import SHOWN_UNKNOWN_KEYS, worker_identity
from ._handoff import handoff_cost_s
from ._model import ModelVersion
from ._operations import Operations
from ._ort_rules import onnxruntime_version
from ._registry import Registry
from ._signature import incompatibilities

__all__ = ["brief_status", "gauge_source", "relative_to_repository", "server_status"]


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
        "control": _control_status(registry, operations),
        "models": _models_status(registry, shadow_status),
    }
    return snapshot if include_paths else _without_paths(snapshot, _known_paths(registry, operations))


def brief_status(
    registry: Registry, operations: Operations, models: Collection[str] | None, *, signatures: bool
) -> dict[str, Any]:
    """What readiness probes and the protocol's model endpoints read, per call, from anyone who asks: the
    ``closed``, ``control`` and ``models`` parts of ``status(include_paths=False)``, for ``models`` only (all
    when ``None``), each version's entry cut to its ``state``, ``error``, ``health`` and (with ``signatures``)
    ``signature``.

    The whole status took 1.5 ms a call with one model and 5 ms with fifty (every version's latency
    histograms and backend facts, then every string searched for paths), on unauthenticated endpoints a load
    balancer polls; the same facts, for one model, take a fraction of that whatever the number of models."""
    snapshot = {
        "closed": registry.closed,
        "control": _control_status(registry, operations),
        "models": _models_status(registry, None, only=models, signatures=signatures),
    }
    return _without_paths(snapshot, _known_paths(registry, operations, only=models))


def _control_status(registry: Registry, operations: Operations) -> dict[str, Any]:
    unknown = registry.control.unknown_keys
    return {
        **{key: value for key, value in registry.control.to_dict().items() if key != "models"},
        "file": operations.control_path,
        "interval_s": operations.control_interval_s,
        "error": operations.control_error,
        # keys of the file this release ignores (a newer release's during a rolling upgrade, or a typo): the
        # first SHOWN_UNKNOWN_KEYS, sorted, and how many in all
        "unknown_keys": unknown[:SHOWN_UNKNOWN_KEYS],
        "unknown_keys_count": len(unknown),
        # False: the file exists but this worker has followed no revision of it since it started
        "read": operations.control_read,
    }


def _brief_entry(model_version: ModelVersion, *, signatures: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "state": model_version.state,
        "error": model_version.error,
        "health": model_version.health(),
    }
    if signatures:
        signature = model_version.signature
        entry["signature"] = None if signature is None else signature.to_dict()
    return entry


def _known_paths(registry: Registry, operations: Operations, *, only: Collection[str] | None = None) -> tuple[str, ...]:
    """Every file-system path status may quote (the repository, the control file, each loaded version's
    file and folder, and a failed one's from outside the repository, of the models in ``only`` when given),
    as given and made absolute."""
    paths: set[str | Path] = set()
    if registry.repository is not None:
        paths.update({registry.repository, registry.repository.resolve()})
    if operations.control_path is not None:
        paths.add(operations.control_path)
        # A control file that is a symbolic link (managed elsewhere: a ConfigMap's mount) refuses the gate's
        # name, and the model's fleet_hold_error quotes the link's target, a path of the host's
        with contextlib.suppress(OSError, ValueError):  # (not a link, or no file: one failed call)
            target = os.readlink(operations.control_path)
            paths.update({target, Path(operations.control_path).parent / target})
    for name, versions in list(registry.loaded.items()):
        if only is not None and name not in only:
            continue
        for model_version in list(versions.values()):
            paths.update({model_version.path, model_version.path.parent.parent})
    # A load error quotes the file it could not load: one loaded by path= from outside the repository, which
    # no other known path covers, is known too (in the repository, the repository's path covers it).
    repository = registry.repository
    for name, failed in list(registry.failures.items()):
        if only is not None and name not in only:
            continue
        for failure in list(failed.values()):
            if repository is None or not failure.path.is_relative_to(repository):
                paths.update({failure.path, failure.path.parent.parent})
    spellings = {str(path) for path in paths}
    spellings.update(os.path.abspath(path) for path in paths)
    return tuple(sorted(spellings))


def _models_status(
    registry: Registry,
    shadow_status: Callable[[str], Any] | None,
    *,
    only: Collection[str] | None = None,
    signatures: bool = True,
) -> dict[str, Any]:
    """The ``models`` part of ``Server.status()``: every model (or those in ``only``), its versions, their
    state and errors (each table copied in one step, so a lifecycle change on another thread never breaks
    the iteration). Without ``shadow_status``, brief: each loaded version's entry is :func:`_brief_entry`
    (``signatures``: with its signature), and a model's ``rollout`` and ``shadow`` are ``None``."""
    brief = shadow_status is None
    models: dict[str, Any] = {}
    loaded, failures, config_errors = dict(registry.loaded), dict(registry.failures), dict(registry.config_errors)
    config_errors = {**registry.unselected(), **config_errors}  # (a model serving nothing by its policy too)
    names = set(loaded) | set(failures) | set(config_errors)
    if only is not None:
        names &= set(only)
    for name in sorted(names):
        routes = registry.routes.get(name)
        versions: dict[str, Any] = {}
        for number, failure in list(failures.get(name, {}).items()):
            versions[str(number)] = {"state": "failed", "error": failure.error}
        held = dict(registry.incompatible.get(name, {}))
        # the version that answers default traffic (switch() judges against a <model>.stable flag's where one
        # is set: status() never calls a flag provider, see docs/repository.md)
        answering = None if routes is None else routes.state.stable_of(routes.versions, routes.default.version)
        baseline = None if routes is None or answering is None else routes.versions[answering]
        unhealthy: dict[str, str] = {}
        for number, model_version in sorted(loaded.get(name, {}).items()):
            model_version, facts = _version_facts(
                registry, name, number, model_version, brief=brief, signatures=signatures
            )
            if facts["health"] is not None and routes is not None and number in routes.versions:
                unhealthy[str(number)] = facts["health"]
            reload_failure = failures.get(name, {}).get(number)  # its files changed and loading them failed
            facts["reload_error"] = None if reload_failure is None else reload_failure.error
            facts["serving"] = routes is not None and number in routes.versions
            problems = _incompatibilities(baseline, model_version, held.get(number))
            facts["compatible"] = not problems
            facts["incompatibilities"] = problems
            versions[str(number)] = facts
        router = registry.routers.get(name)
        state = registry.control.models.get(name)
        models[name] = {
            "default_version": None if routes is None else routes.default.version,
            # What it serves now (docs/operations.md): the switched-to version, else the configured stable
            # one, else the latest. It was the latest until a switch set an alias, while config.toml's
            # stable version answered: a switch to the latest then looked done before any worker followed.
            "stable_version": answering,
            "control": None if state is None else state.to_dict(),
            # Servable, and the version answering default traffic can take work (a remote one whose
            # server is down cannot); ``unhealthy``: serving versions that cannot, and why.
            "answering_version": answering,
            "ready": routes is not None and str(answering) not in unhealthy,
            "unhealthy": unhealthy,
            "config_error": config_errors.get(name),
            # keys of its config.toml, or of a loaded version's remote.toml, this release ignores (a newer
            # release's during a rolling upgrade, or a typo)
            "config_warning": registry.config_warning(name),
            # the gate holds a version back, and the version serving could not be named the fleet's stable
            # version in the control file (the fleet is not held: a worker that starts now serves the held one)
            "fleet_hold_error": registry.fleet_hold_error(name),
            "versions": versions,
            "rollout": None if router is None or brief else router.status(),
            "shadow": None if shadow_status is None else shadow_status(name),
        }
    return models


_REPLACED_COPY_READS = 4
"""How many replacing copies of one version a status read follows (each a hot reload finished while it read;
past them, the last copy's facts stand: a reload takes a whole load, far longer than a read)."""


def _version_facts(
    registry: Registry, name: str, number: int, model_version: ModelVersion, *, brief: bool, signatures: bool
) -> tuple[ModelVersion, dict[str, Any]]:
    """``model_version``'s facts, or those of the copy that replaced it meanwhile: a hot reload swaps the new
    copy in, then retires the old one, so the old copy's, read after the table was copied, showed a served
    version as "draining" or "unloaded", and unhealthy ("... is unloaded"; readiness then failed while the
    answering version reloaded). The facts are read first, then the copy checked to be still the loaded one;
    returns the copy read, and its facts."""
    for _ in range(_REPLACED_COPY_READS):
        facts = _brief_entry(model_version, signatures=signatures) if brief else model_version.status()
        current = registry.loaded.get(name, {}).get(number)
        if current is None or current is model_version:  # (unloaded meanwhile: the old copy's facts stand)
            break
        model_version = current
    return model_version, facts


def _incompatibilities(baseline: ModelVersion | None, version: ModelVersion, held: list[str] | None) -> list[str]:
    """What would break for callers of ``baseline`` (the version answering default traffic) if ``version``
    answered them, as switch() judges it: every version is compared, not only the one the gate held back (a
    canary, an A/B arm or an older version was shown compatible, with nothing listed, while switch() refused
    it); ``held``, the gate's finding, where there is nothing to compare with."""
    if baseline is None or baseline is version or baseline.signature is None or version.signature is None:
        return list(held or ())
    return incompatibilities(baseline.signature, version.signature)


_PATH_KEYS = frozenset({"path", "repository", "file", "folder", "optimized_path", "inputs_file"})
"""Keys that hold a path in the records of the status document (the document itself, its ``control``, a
version's entry and its ``backend_status``). Never applied to maps keyed by names users choose (models,
versions, rollout arms, drift features, header names ...): a model named ``file`` is a model."""

_SEPARATORS = "".join(sorted({"/", os.sep, os.altsep or "/"}))
_NAME_CHARS = r"\w~\-"  # characters that continue a file name (with ".", handled apart)
_has_separator = re.compile(f"[{re.escape(_SEPARATORS)}]").search


def _without_paths(snapshot: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    """``snapshot`` with every path-valued key of its records dropped and every known path in its strings
    replaced by ``<path>``."""
    pattern = _path_pattern(paths)
    public = _records_without_paths(snapshot)
    # (each model apart: one whose JSON text holds no separator quotes no path, and is taken as it is. Walking
    # and copying every model's ~100 values, histograms, signature and rollout, took most of a status of many
    # models: 2,000 took 0.5 to 1 s here, 0.2 to 0.3 s so)
    models = public.pop("models", _ABSENT)
    public = _replace_paths(public, pattern)
    assert isinstance(public, dict)
    if isinstance(models, dict):
        public["models"] = {
            name: model if pattern is None or _quotes_no_path(model) else _replace_paths(model, pattern)
            for name, model in models.items()
        }
    elif models is not _ABSENT:
        public["models"] = _replace_paths(models, pattern)
    return public


_ABSENT = object()


def _quotes_no_path(value: Any) -> bool:
    """Whether ``value`` holds no string with a separator (keys included: a name with one is walked too)."""
    try:
        return not _has_separator(json.dumps(value, default=str))
    except (TypeError, ValueError):  # (a key JSON cannot hold, a cycle: walked as before)
        return False


def _records_without_paths(snapshot: dict[str, Any]) -> dict[str, Any]:
    """Drop the path keys where paths live: the top level, ``control``, and each version's entry and its
    ``backend_status``. Copies what it changes; the name-keyed maps in between keep every name."""
    public = _drop_path_keys(snapshot)
    if isinstance(public.get("control"), dict):
        public["control"] = _drop_path_keys(public["control"])
    if isinstance(public.get("models"), dict):
        models = {}
        for name, model in public["models"].items():
            if isinstance(model, dict) and isinstance(model.get("versions"), dict):
                versions = {}
                for number, entry in model["versions"].items():
                    if isinstance(entry, dict):
                        entry = _drop_path_keys(entry)
                        if isinstance(entry.get("backend_status"), dict):
                            entry["backend_status"] = _drop_path_keys(entry["backend_status"])
                    versions[number] = entry
                model = {**model, "versions": versions}
            models[name] = model
        public["models"] = models
    return public


def _drop_path_keys(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in _PATH_KEYS}


def _replace_paths(value: Any, pattern: re.Pattern[str] | None) -> Any:
    """``value`` with every known path in its strings (not in its keys: those are names) replaced."""
    if pattern is None or value is None or type(value) in (int, float, bool):  # (histograms: most values)
        return value
    if isinstance(value, dict):
        return {key: _replace_paths(item, pattern) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_replace_paths(item, pattern) for item in value]
    if isinstance(value, str):
        # every path the pattern matches holds a separator; most strings (states, provider and tensor names)
        # hold none, and skipping them keeps a status of a thousand versions from costing a second a call
        return pattern.sub("<path>", value) if _has_separator(value) else value
    return value


@functools.lru_cache(maxsize=32)
def _path_pattern(paths: tuple[str, ...]) -> re.Pattern[str] | None:
    """One pattern matching every path worth replacing, only where a path starts and ends.

    An absolute path, or a relative one with a separator (``models/fraud``), matches where it stands
    alone: not inside a longer name (``/srv/m`` in ``/srv/models``) and not as the tail of another path.
    A relative path of one component (``models``, ``model.onnx``) matches only as the start of a longer
    path (``models/fraud/1/model.onnx``), never as a word of a message. ``.``, ``..`` and a root are
    never replaced (``1.32.0`` must stay a version); their absolute forms are among ``paths`` anyway.
    Longest first, so a folder never eats part of its file: the paths go into a trie, each branch point
    tried longer-first, so the pattern costs about one step per character of a string. (One alternative
    per path, tried in turn at every character, cost a second per status call with a thousand versions.)
    """
    separators = re.escape(_SEPARATORS)
    before = rf"(?<![{_NAME_CHARS}.{separators}])"
    ends = rf"(?![{_NAME_CHARS}]|\.[{_NAME_CHARS}])"
    prefix = rf"(?=[{separators}])"
    trie: dict[str, Any] = {}
    for path in set(paths):
        if not path.strip("." + _SEPARATORS):  # ".", "..", "/", "./": no path at all
            continue
        alone = os.path.isabs(path) or any(separator in path for separator in _SEPARATORS)
        node = trie
        for char in path:
            node = node.setdefault(char, {})
        node[""] = ends if alone else prefix  # where a path ends, the assertion that it ends there
    return re.compile(before + _trie_pattern(trie)) if trie else None


def _trie_pattern(node: dict[str, Any]) -> str:
    """A trie node as a pattern: its longer continuations first, then the end of a path ending here.
    (Loops down chains of one continuation, so a long path does not recurse once per character.)"""
    chain = ""
    while len(node) == 1 and "" not in node:
        ((char, node),) = node.items()
        chain += re.escape(char)
    branches = [re.escape(char) + _trie_pattern(child) for char, child in sorted(node.items()) if char]
    if "" in node:
        branches.append(node[""])
    return chain + (branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")")


def relative_to_repository(text: str, repository: Path | None) -> str:
    """``text`` with ``repository``'s path (as given, absolute, resolved) cut from the start of each path it
    quotes under it: ``/srv/app/models/fraud/3/model.onnx`` reads ``fraud/3/model.onnx``, and the repository's
    own absolute path reads ``<repository>``. For answers to the admin endpoints' clients, who need to know
    which file of the repository, not the host's folders (the log quotes the whole path)."""
    if repository is None or not _has_separator(text):
        return text
    spellings = {str(repository), os.path.abspath(repository), str(repository.resolve())}
    stems = sorted({s.rstrip(_SEPARATORS) for s in spellings if s.strip("." + _SEPARATORS)}, key=len, reverse=True)
    if not stems:
        return text
    separators = re.escape(_SEPARATORS)
    starts = rf"(?<![{_NAME_CHARS}.{separators}])"  # (where a path starts: not inside a longer one)
    paths = "|".join(map(re.escape, stems))
    text = re.sub(rf"{starts}(?:{paths})[{separators}]+", "", text)
    # the repository itself (gone, unreadable) where nothing under it is named: an absolute spelling only (a
    # relative one, "models", is no host path, and is a word of other messages too)
    absolute = "|".join(re.escape(stem) for stem in stems if os.path.isabs(stem))
    if not absolute:
        return text
    # (ends: before anything but a name's characters or a separator; dots only where they end a sentence or a
    # cut ("/srv/models.", "/srv/models...(300 characters)"), not where a longer name or a path goes on:
    # "/srv/models.old", "/srv/models..x" and "/srv/models./x" are other paths)
    ends = rf"(?![{_NAME_CHARS}{separators}]|\.+[{_NAME_CHARS}{separators}])"
    return re.sub(rf"{starts}(?:{absolute}){ends}", "<repository>", text)


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
                if model_version.cache is not None:
                    values.append(("cache_bytes", float(model_version.cache.held_bytes), attributes))
        # Versions failing to load now, per model (0 for one whose versions load): what an alert needs. The
        # lifecycle counter's "failed" cannot say it: a version failed for good is not tried again, so its
        # count never grows, and a version copied in place fails once and then loads under the same count.
        for name in {*registry.routes, *registry.failures}:
            failing = float(registry.failing_versions(name))
            values.append(("failed_versions", failing, {"inprocserve.model.name": name}))
        return values

    return observe
