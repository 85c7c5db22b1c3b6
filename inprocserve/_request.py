"""Where a request goes and why: the typed, immutable route the server decides before queueing.

A ``NamedTuple`` rather than a frozen dataclass: it is built once per request on the hot path, and a
tuple's construction costs a fraction of a dataclass's, with the same named, read-only fields.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from ._rollout import Decision

__all__ = ["Route"]


class Route(NamedTuple):
    """The routing of one request: which version answers, why, its id, and the versions that shadow it."""

    model: str
    version: int
    variant: str
    reason: str
    request_id: str
    shadows: list[Any]  # ModelVersion objects that get a copy of the request (spare capacity only)
    decision: Decision
