"""The fault and abuse suite: short in ``make test``, long in ``make soak``.

Each test runs for ``SOAK_SECONDS`` (default 1.5: the short run of ``make test``; ``make soak`` sets more)
and reports its figures on stdout (``-s``) and, when ``SOAK_RESULTS`` names a file, as JSON lines there.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any


def soak_seconds() -> float:
    """How long each soak test runs (``SOAK_SECONDS``; 1.5 s by default)."""
    return float(os.environ.get("SOAK_SECONDS", "1.5"))


def report(test: str, figures: dict[str, Any]) -> None:
    """Print one test's figures and append them to ``SOAK_RESULTS`` if set."""
    line = {"test": test, "seconds": soak_seconds(), **figures}
    print(f"\nSOAK {json.dumps(line, sort_keys=True, default=str)}")
    target = os.environ.get("SOAK_RESULTS")
    if target:
        with Path(target).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, sort_keys=True, default=str) + "\n")


class Tally:
    """Outcomes counted by kind; thread-safe enough for counters (one Counter update per call under the GIL
    is not atomic, so each worker keeps its own and they are summed at the end)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.wrong: list[str] = []
        self.untyped: list[str] = []

    def merge(self, other: Tally) -> None:
        self.counts.update(other.counts)
        self.wrong.extend(other.wrong)
        self.untyped.extend(other.untyped)


def deadline_after(seconds: float) -> float:
    return time.monotonic() + seconds
