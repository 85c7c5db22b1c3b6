"""The known name closest to one that matches none: the ``(stable?)`` of a message about a typo.

One helper for every such message (``config.toml`` keys, the plug-ins' settings, model names), so that they
judge closeness alike; each picks its ``cutoff``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["DEFAULT_CUTOFF", "TYPO_CUTOFF", "close_match"]

DEFAULT_CUTOFF = 0.6
"""difflib's own: also a name cut short or grown (``TIMEOUT_S`` for ``DEFAULT_TIMEOUT_S``)."""

TYPO_CUTOFF = 0.8
"""A letter or two off (``stabel`` for ``stable``), no more: where a wider guess would mislead."""


def close_match(name: str, known: Iterable[str], *, cutoff: float = DEFAULT_CUTOFF) -> str | None:
    """The name of ``known`` closest to ``name`` by difflib's ratio, when it is at least ``cutoff``.

    The work is bounded by the known names, not by ``name``, which a client may choose (megabytes): a name
    so much longer than every known one that no ratio can reach ``cutoff`` is not compared at all (the ratio
    of strings of lengths ``a > b`` is at most ``2b / (a + b)``, computed here as difflib computes it).
    """
    candidates = list(known)
    longest = max(map(len, candidates), default=0)
    if len(name) > longest and 2.0 * longest / (len(name) + longest) < cutoff:
        return None
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=cutoff)
    return found[0] if found else None
