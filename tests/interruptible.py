"""``preexec_fn`` for a child a test stops with SIGINT, as Ctrl-C stops a terminal's foreground job."""

from __future__ import annotations

import signal

__all__ = ["interruptible"]


def interruptible() -> None:
    """In the child before it runs Python: Ctrl-C's signal as a terminal gives it. A shell ignores SIGINT in
    the commands it starts in the background (a CI runner's job may be one), the child inherits that, and
    Python then installs no KeyboardInterrupt handler: the test's SIGINT did nothing (daphne and waitress,
    which leave SIGINT to Python, then served on until the test killed them)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
