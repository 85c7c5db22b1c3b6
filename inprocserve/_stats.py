"""Per-version request latency and batch-size histograms, for :meth:`Server.status` and the status page.

Recording sits on the request path, so it is one ``bisect`` into fixed log-spaced bucket bounds (or one
``int.bit_length`` for batch sizes) and one list increment: a few hundred nanoseconds, and no lock. Under
CPython's GIL an increment can be lost when two threads bump the same bucket at the same instant (read, add
and store are separate bytecodes). These counts are for people reading a page, where a rare lost count
does not matter; a lock would cost more than the recording itself. Exact counts live in the OpenTelemetry
metrics.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

__all__ = ["BatchSizeHistogram", "LatencyHistogram", "latency_bounds_s"]

_STEPS_PER_OCTAVE = 8  # bucket bounds grow by 2 ** (1/8): a percentile is read to within about 9 %
_SMALLEST_S = 1e-5  # 10 µs: below anything a request through a Python server can take
_OCTAVES = 24  # up to about 168 s; slower requests land in the overflow bucket
_LATENCY_BOUNDS_S: tuple[float, ...] = tuple(
    _SMALLEST_S * 2 ** (step / _STEPS_PER_OCTAVE) for step in range(_OCTAVES * _STEPS_PER_OCTAVE + 1)
)
_BATCH_BUCKETS = 17  # 1, 2, 3-4, 5-8, ... 16385-32768, and larger than 32768 in the last one


def latency_bounds_s() -> tuple[float, ...]:
    """The upper bounds of the latency buckets, in seconds (the last bucket is everything above them)."""
    return _LATENCY_BOUNDS_S


class LatencyHistogram:
    """Request latencies of one model version since it loaded, in log-spaced buckets.

    Thread-safe enough for statistics: :meth:`record` takes no lock, so concurrent calls may rarely lose
    a count (see the module docstring); :meth:`snapshot` copies the counts in one step.
    """

    __slots__ = ("_counts", "_errors")

    def __init__(self) -> None:
        self._counts = [0] * (len(_LATENCY_BOUNDS_S) + 1)
        self._errors = 0

    def record(self, seconds: float, *, failed: bool = False) -> None:
        """Count one request that took ``seconds`` from the call to the answer; a ``failed`` one is only
        counted as an error, so that fast rejections do not flatter the percentiles."""
        if failed:
            self._errors += 1
        else:
            self._counts[bisect_left(_LATENCY_BOUNDS_S, seconds)] += 1

    def snapshot(self) -> dict[str, Any]:
        """``{"count", "errors", "p50", "p90", "p99", "histogram"}``, times in milliseconds.

        Percentiles are interpolated inside their bucket (within about 9 %), ``None`` before any request.
        ``histogram`` lists the non-empty buckets as ``[lower ms, upper ms, count]`` (a bucket holds the
        times above its lower and up to its upper bound); the overflow bucket's upper bound is ``None``.
        """
        counts = list(self._counts)  # one C-level copy: a consistent enough view while others record
        total = sum(counts)
        result: dict[str, Any] = {"count": total, "errors": self._errors}
        for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            result[name] = _percentile_ms(counts, total, fraction)
        histogram: list[list[Any]] = []
        for index, count in enumerate(counts):
            if count:
                lower = _LATENCY_BOUNDS_S[index - 1] * 1000 if index else 0.0
                upper = _LATENCY_BOUNDS_S[index] * 1000 if index < len(_LATENCY_BOUNDS_S) else None
                histogram.append([round(lower, 4), None if upper is None else round(upper, 4), count])
        result["histogram"] = histogram
        return result


def _percentile_ms(counts: list[int], total: int, fraction: float) -> float | None:
    if total == 0:
        return None
    rank = fraction * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index >= len(_LATENCY_BOUNDS_S):  # the overflow bucket: all we know is its lower edge
                return round(_LATENCY_BOUNDS_S[-1] * 1000, 4)
            lower = _LATENCY_BOUNDS_S[index - 1] if index else 0.0
            upper = _LATENCY_BOUNDS_S[index]
            return round((lower + (upper - lower) * (rank - seen) / count) * 1000, 4)
        seen += count
    return None  # not reached: the counts sum to total


class BatchSizeHistogram:
    """Rows per executed batch (``session.run`` call) of one model version, in power-of-two buckets.

    Thread-safe enough for statistics, like :class:`LatencyHistogram`.
    """

    __slots__ = ("_counts", "_rows")

    def __init__(self) -> None:
        self._counts = [0] * _BATCH_BUCKETS
        self._rows = 0

    def record(self, rows: int) -> None:
        """Count one batch of ``rows`` rows (``rows`` >= 1)."""
        index = (rows - 1).bit_length()
        self._counts[index if index < _BATCH_BUCKETS else _BATCH_BUCKETS - 1] += 1
        self._rows += rows

    def snapshot(self, *, max_rows: int = 1) -> dict[str, Any]:
        """``{"batches", "rows", "histogram"}``: ``histogram`` maps a row range ("1", "2", "3-4", "5-8", ...)
        to the number of batches of that size, from 1 row up to the bucket holding ``max_rows`` or the largest
        batch seen, whichever is larger (so empty buckets show batches that never filled); ``rows``: the rows
        of all of them (``rows / batches`` is the mean rows per run, every run counted alike)."""
        counts = list(self._counts)
        last = max(
            (max_rows - 1).bit_length() if max_rows >= 1 else 0,
            max((index for index, count in enumerate(counts) if count), default=0),
        )
        last = min(last, _BATCH_BUCKETS - 1)
        return {
            "batches": sum(counts),
            "rows": self._rows,
            "histogram": {_batch_label(index): counts[index] for index in range(last + 1)},
        }


def _batch_label(index: int) -> str:
    if index == 0:
        return "1"
    if index == 1:
        return "2"
    if index == _BATCH_BUCKETS - 1:
        return f">{2 ** (index - 1)}"
    return f"{2 ** (index - 1) + 1}-{2**index}"
