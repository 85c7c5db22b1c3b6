"""Progress of a batch scoring job: the ``progress`` argument of ``predict_many`` resolved to a callback, and
the one-line terminal bar that ``progress=True`` and the ``score`` command draw."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "ProgressBar", "resolve_progress"]

Progress = Callable[[int, "int | None"], None]


class ProgressBar:
    """A one-line progress bar redrawn in place on a terminal, at most every ``interval_s`` seconds.

    The line is fitted to the terminal's width (``columns``: fixed; ``None``: the stream's terminal, asked at
    each redraw), the bar shrinking first: a line wider than the terminal wraps, and ``\r`` then goes back
    only to the start of its last row, so on an 80-column terminal every redraw of the 86-character line of
    a million-row job left a new line behind. A line shorter than the one before it is padded over its
    leftovers (``230,000 rows/s`` after ``1,100,000 rows/s`` showed ``230,000 rows/ss``).

    Not thread-safe: it is driven by the thread that iterates the results.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval_s: float = 0.2,
        width: int = 30,
        clock: Callable[[], float] = time.monotonic,
        columns: int | None = None,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._columns = columns
        self._shown = 0  # characters of the line on screen
        self._interval_s = interval_s
        self._width = width
        self._clock = clock
        self._started = clock()
        self._drawn_at: float | None = None
        self._last: tuple[int, int | None] = (0, None)
        self._drawn_anything = False

    def __call__(self, done_rows: int, total_rows: int | None) -> None:
        self._last = (done_rows, total_rows)
        now = self._clock()
        if self._drawn_at is not None and now - self._drawn_at < self._interval_s and done_rows != total_rows:
            return
        self._draw(now)

    def _draw(self, now: float) -> None:
        done, total = self._last
        elapsed = now - self._started
        rate = f"{done / elapsed:,.0f} rows/s" if elapsed > 0 else "- rows/s"
        room = self._room()
        if total:
            fraction = min(1.0, done / total)
            counts = f" {fraction:6.1%} {done:,}/{total:,} rows, {rate}"
            width = min(self._width, room - len(counts) - 2)  # what the counts leave of the line (2: brackets)
            if width >= 5:
                filled = int(fraction * width)
                text = "[" + "#" * filled + "-" * (width - filled) + "]" + counts
            else:
                text = counts.lstrip()
        else:
            text = f"{done:,} rows, {rate}"
        text = text[:room]
        self._stream.write(f"\r{text.ljust(self._shown)}")
        self._shown = len(text)
        self._stream.flush()
        self._drawn_at = now
        self._drawn_anything = True

    def _room(self) -> int:
        """Characters a line may hold: one less than the terminal's columns (a full row wraps on some)."""
        columns = self._columns
        if columns is None:
            try:
                columns = os.get_terminal_size(self._stream.fileno()).columns
            except (AttributeError, OSError, ValueError):  # not a terminal, or no file behind the stream
                columns = 0
            columns = columns or shutil.get_terminal_size().columns  # (a terminal of unknown size says 0)
        return max(columns - 1, 20)

    def close(self) -> None:
        """Draw the final state and end the line."""
        self._draw(self._clock())
        if self._drawn_anything:
            self._stream.write("\n")
            self._stream.flush()


def resolve_progress(*, progress: bool | Progress | None) -> tuple[Progress | None, ProgressBar | None]:
    """``True``: a bar on stderr if it is a terminal (nothing otherwise); a callable: itself."""
    if progress is None or progress is False:
        return None, None
    if progress is True:
        isatty = getattr(sys.stderr, "isatty", None)
        if isatty is None or not isatty():
            return None, None
        bar = ProgressBar(sys.stderr)
        return bar, bar
    if callable(progress):
        return progress, None
    raise TypeError(f"progress must be True, False, None or a callable(done_rows, total_rows), got {progress!r}")
