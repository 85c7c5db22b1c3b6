"""Whether a server can answer requests, per model, for an integration's readiness probe."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._errors import ServerClosedError
from ._process import NO_SERVER, server_or_none

if TYPE_CHECKING:
    from .._server import Server


@dataclass(frozen=True)
class Readiness:
    """Whether a server can answer requests, from its ``status()``.

    Attributes:
        ready: Open, with at least one model, and every checked model servable.
        models: The models checked, sorted (the ``required`` ones, or every model found).
        reasons: Model name -> why it is not servable (empty when ready).
        closed: The server is closed.
        warming: The server is still being built in this process (eager warm-up after a fork).
        degraded: Model name -> why a version other than the default cannot take work now (a canary or
            shadow on a remote server that is down); such a model still counts as ready.
    """

    ready: bool
    models: tuple[str, ...] = ()
    reasons: Mapping[str, str] = field(default_factory=dict)
    closed: bool = False
    warming: bool = False
    degraded: Mapping[str, str] = field(default_factory=dict)
    unbuilt: bool = False

    @classmethod
    def warming_up(cls) -> Readiness:
        """Not ready: this process is building its server right now (do not wait for it in a probe)."""
        return cls(ready=False, warming=True)

    def body(self) -> dict[str, Any]:
        """The JSON body of a readiness probe (answer 200 when ``ready``, else 503)."""
        if self.warming:
            return {"ready": False, "warming": True, "worker": os.getpid()}
        if self.unbuilt:
            return {"ready": False, "error": NO_SERVER, "worker": os.getpid()}
        degraded = {"degraded": dict(self.degraded)} if self.degraded else {}
        if self.ready:
            return {"ready": True, "models": list(self.models), **degraded}
        return {"ready": False, "models": dict(self.reasons), "closed": self.closed, **degraded}


def probe_readiness(server_factory: Callable[[], Server], required: Sequence[str] | None = None) -> Readiness:
    """The readiness of the app's server (see :func:`readiness`), built by ``server_factory()`` (such as a
    :meth:`ProcessLocalServer.get`) if it is not yet: one that cannot be built is not ready (:data:`NO_SERVER`, a
    503 like any other), where the probe answered a 500 and logged a traceback each time. One the app closed for
    good is not ready, and ``closed``."""
    try:
        built = server_or_none(server_factory, "readiness probe")
    except ServerClosedError:
        return Readiness(ready=False, closed=True)
    return Readiness(ready=False, unbuilt=True) if built is None else readiness(built, required)


def readiness(server: Server, required: Sequence[str] | None = None) -> Readiness:
    """The readiness of ``server``: every model in ``required`` (default: every model found) servable.

    Reasons never quote file-system paths (they come from ``status(include_paths=False)``, cut to what
    readiness reads: probes call this often).
    """
    status = server._brief_status(required or None)
    found: Mapping[str, Any] = status["models"]
    names = sorted(required) if required else sorted(found)
    reasons = {}
    degraded = {}
    for name in names:
        model = found.get(name)
        if model is None:
            reasons[name] = "not in the repository"
        elif not model.get("ready"):
            reasons[name] = _first_error(model)
        elif model.get("unhealthy"):
            degraded[name] = "; ".join(f"version {v}: {why}" for v, why in sorted(model["unhealthy"].items()))
    unread = _control_unknown(status)
    if unread is not None:
        reasons = dict.fromkeys(names, unread)
    closed = bool(status["closed"])
    return Readiness(
        ready=not closed and bool(names) and not reasons,
        models=tuple(names),
        reasons=reasons,
        closed=closed,
        degraded=degraded,
    )


def _control_unknown(status: Mapping[str, Any]) -> str | None:
    """Why a server whose ``status()`` this is routes no request that does not pin a version
    (``ControlStateUnknownError``), or ``None`` when it routes them.

    A worker that follows no revision of its control file could undo the fleet's switches and kill switches,
    so it refuses them while its watcher has not read one. Without a watcher (``interval_s`` None) nothing
    would read the file again: it serves by every model's own config then, and is not refused."""
    control = status.get("control") or {}
    if control.get("read") is not False or control.get("interval_s") is None:
        return None
    return (
        "this worker follows no revision of the control file yet (it routes no request until it does: "
        f"every model's own config could undo the fleet's revision): {control.get('error') or 'being applied'}"
    )


def _first_error(model: Mapping[str, Any]) -> str:
    if model.get("config_error"):
        return str(model["config_error"])
    default = model.get("answering_version")  # the version that answers default traffic
    unhealthy = model.get("unhealthy") or {}
    if default is not None and str(default) in unhealthy:  # served, but its remote server is down
        return f"version {default}: {unhealthy[str(default)]}"
    for version in model.get("versions", {}).values():
        if version.get("error"):
            return str(version["error"])
    return "no servable version"
