"""Counters that the request path bumps with a dict lookup and an integer increment (see :class:`Tally`)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from . import _fork

__all__ = ["Tally"]


class Tally:
    """A monotonic counter kept in plain integers and reported through an observable counter.

    A synchronous ``Counter.add`` costs the OpenTelemetry SDK about as much as a histogram record (a
    measurement object, the attributes cleaned, copied and hashed, the exemplar filter, a lock), on the
    thread that counts. Here :meth:`add` costs a few hundred nanoseconds; the SDK reads the totals when it
    collects, as the cumulative sums a ``Counter`` would have reported (Prometheus ``*_total``; an exporter
    that wants deltas gets them from the SDK). Counting starts with the first :meth:`add`, so the caller
    skips it until the application installs a meter provider, as it would skip ``Counter.add``.

    A forked child starts from zero: the parent's counts are the parent's to report.

    Thread-safe (one short lock; no count is lost).

    Args:
        meter: Where the observable counter is created.
        name, unit, description: The instrument's.
    """

    def __init__(self, meter: metrics.Meter, name: str, *, unit: str, description: str) -> None:
        self.name = name
        self._reset()
        meter.create_observable_counter(name, callbacks=[self._observe], unit=unit, description=description)
        _fork.register(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[frozenset[tuple[str, Any]], list[Any]] = {}  # attribute set -> [attributes, total]

    def _after_fork_in_child(self) -> None:
        self._reset()

    def add(self, amount: int, attributes: Mapping[str, Any]) -> None:
        """Count ``amount`` (>= 0) events with ``attributes`` (a bounded set of values: each distinct set
        is kept for the life of the process, as the SDK keeps a counter's)."""
        if amount < 0:
            raise ValueError(f"{self.name}: a counter only grows, got {amount}")
        key = frozenset(attributes.items())
        with self._lock:
            entry = self._counts.get(key)
            if entry is None:
                self._counts[key] = [dict(attributes), amount]
            else:
                entry[1] += amount

    def total(self, attributes: Mapping[str, Any]) -> int:
        """The count so far for exactly ``attributes`` (0 if never counted)."""
        entry = self._counts.get(frozenset(attributes.items()))
        return 0 if entry is None else int(entry[1])

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            totals = [(attributes, total) for attributes, total in self._counts.values()]
        return [Observation(total, attributes) for attributes, total in totals]
