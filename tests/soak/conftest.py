"""The fault and abuse suite: short in ``make test``, long in ``make soak``.

Each test runs for ``SOAK_SECONDS`` (default 1.5: the short run of ``make test``; ``make soak`` sets more)
and reports its figures on stdout (``-s``) and, when ``SOAK_RESULTS`` names a file, as JSON lines there. Each
line also carries the process's resident memory, open file descriptors and threads as the test reports (Linux),
most often while its server still serves; so each test also gets a line ``<test id> torn down`` taken once its
fixtures have closed every server it made, with the figures before it started. The torn-down lines of one run,
in order, show a leak as a count that grows from test to test.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import inprocserve

T = TypeVar("T")


def soak_seconds() -> float:
    """How long each soak test runs (``SOAK_SECONDS``; 1.5 s by default)."""
    return float(os.environ.get("SOAK_SECONDS", "1.5"))


def process_figures() -> dict[str, int]:
    """Resident memory (KiB), open file descriptors and threads (Python's and the OS's) of this process now,
    after a collection; empty where /proc is missing."""
    if not Path("/proc/self/statm").exists():
        return {}
    gc.collect()
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return {
        "rss_kib": resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024,
        "fds": len(os.listdir("/proc/self/fd")),
        "python_threads": threading.active_count(),
        "os_threads": len(os.listdir("/proc/self/task")),
    }


def report(test: str, figures: dict[str, Any]) -> None:
    """Print one test's figures, with the process's (:func:`process_figures`), and append them to
    ``SOAK_RESULTS`` if set."""
    line = {"test": test, "seconds": soak_seconds(), **figures, "process": process_figures()}
    print(f"\nSOAK {json.dumps(line, sort_keys=True, default=str)}")
    target = os.environ.get("SOAK_RESULTS")
    if target:
        with Path(target).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, sort_keys=True, default=str) + "\n")


@pytest.fixture(autouse=True)
def figures_once_torn_down(request: pytest.FixtureRequest) -> Iterator[None]:
    """Report the process's figures before each soak test and after its teardown.

    What ``report`` shows is taken as a test ends, mostly while ``make_server``'s server still runs its threads
    and holds its sessions; a thread, descriptor or session left behind by ``close()`` shows only after it. An
    autouse fixture is set up before the fixtures a test names, so it is torn down after them.
    """
    before = process_figures()
    yield
    report(f"{request.node.name} torn down", {"before": before})


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

    def outcome(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """``call(*args, **kwargs)``'s answer; None once a typed error is counted by its class, or an untyped one
        (a defect) kept with its repr."""
        try:
            return call(*args, **kwargs)
        except inprocserve.InprocserveError as exc:
            self.counts[type(exc).__name__] += 1
        except Exception as exc:  # anything untyped is a defect
            self.untyped.append(repr(exc))
        return None


def joined(threads: list[threading.Thread], tallies: list[Tally]) -> Tally:
    """Wait for a soak's caller threads (a bounded wait: one still running is a caller that hung), then sum
    their tallies."""
    for thread in threads:
        thread.join(timeout=soak_seconds() + 120)
    assert not any(thread.is_alive() for thread in threads), "a caller hung"
    total = Tally()
    for tally in tallies:
        total.merge(tally)
    return total


def deadline_after(seconds: float) -> float:
    return time.monotonic() + seconds
