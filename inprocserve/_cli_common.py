"""What every subcommand shares: the type ``add_*`` functions take, and a parser with examples."""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TypeAlias

__all__ = [
    "Subparsers",
    "Terminated",
    "add_command",
    "fail",
    "positive_float",
    "positive_number",
    "positive_int",
    "printable",
    "raise_if_stopped",
    "unwind_on_sigterm",
]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

OK, PROBLEMS, CANNOT_RUN = 0, 1, 2
"""Exit statuses: all well; the command ran and found a problem; the command could not run."""


def add_command(commands: Subparsers, name: str, *, summary: str, examples: str) -> argparse.ArgumentParser:
    """Add subcommand ``name`` whose ``--help`` ends with ``examples`` (shown as written, not re-wrapped)."""
    return commands.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def fail(message: str, status: int = CANNOT_RUN) -> int:
    """Print ``error: message`` on stderr and return ``status``, for ``return fail(...)``."""
    print(f"error: {message}", file=sys.stderr)
    return status


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number >= 1 (anything else is a usage error, exit status 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give one >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def positive_number(what: str, example: str) -> Callable[[str], float]:
    """An argparse ``type``: a finite number > 0 (``0``, negatives, ``nan`` and ``inf`` are usage errors), its
    messages naming ``what`` the number is and an ``example``."""

    def positive(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; give {what} > 0, e.g. {example}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0, e.g. {example}")
        return value

    return positive


positive_float = positive_number("seconds", "1 or 0.5")
"""An argparse ``type`` for seconds: a finite number > 0."""


def printable(text: str) -> str:
    """``text`` with every character that is not printable written as its escape (``\\x1b``, ``\\n``): names
    and messages from a status endpoint or a model file come from afar, and printed as they are, a terminal's
    escape sequences in them would retitle, clear or recolour the terminal, and a newline would forge a line
    of the output (``fraud: ready``, ``OK      fraud v9``)."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


class Terminated(BaseException):
    """SIGTERM (or SIGHUP) arrived while a command ran; raised on the main thread so the run unwinds as Ctrl-C
    does (a ``BaseException``: no ``except Exception`` on the way swallows it). ``signum`` is the signal's."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = signal.Signals(signum)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) while a command ran under :func:`unwind_on_sigterm`: a ``KeyboardInterrupt``, caught as
    one, but not of that class itself. CPython takes a ``KeyboardInterrupt`` (that class exactly) that leaves
    the code of an ``eval()`` or ``exec()`` of a string for one nobody caught, even where the code around it
    catches it, and ``python -m`` then ends the process by SIGINT as it exits, whatever status it returns. A
    Ctrl-C that came as numpy.random was imported (as ``quantize`` compares its models), while a namedtuple's
    ``eval()`` compiled, unwound the command and printed its one line, and then the process died of SIGINT
    rather than exiting 130; a program running ``main()`` went on, and was killed so as it exited."""


def interrupted_by(error: BaseException) -> BaseException | None:
    """The ``KeyboardInterrupt`` or :class:`Terminated` that ``error`` was raised from or while handling, if
    any: a signal that arrives while a C extension's module initializes (onnxruntime's, imported as the
    model loads) is turned into ``ImportError: initialization failed`` there, and so the command said the
    model could not be loaded (exit 1) when it was stopped; an error raised while unwinding (a memory map
    closed with a view left) hid it as well."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        link = pending.pop()
        if id(link) in seen:
            continue
        seen.add(id(link))
        if isinstance(link, KeyboardInterrupt | Terminated):
            return link
        pending.extend(chained for chained in (link.__cause__, link.__context__) if chained is not None)
    return None


_stopped_by: BaseException | type[BaseException] | None = None
"""The exception a stop signal raised in the command running under :func:`unwind_on_sigterm`, once one came."""


_unwinding = False
"""Whether :func:`unwind_on_sigterm` is in force (on the main thread): an inner one leaves the outer's in place."""

_stop_lost = False
"""Whether the stop signal raised last in :func:`unwind_on_sigterm` was discarded (where Python cannot raise:
a finalizer, a callback of C code): the command did not unwind, so the next stop signal raises again, until
:func:`raise_if_stopped` raises it. (Ignored, Ctrl-C pressed again did nothing until the command's next
checkpoint, however long its step ran: only SIGKILL ended it.)"""

exits_after = False
"""Set by ``python -m inprocserve`` (and the installed command): the process ends once the command returns, so
once a stopped command has unwound, a further stop signal ends the process at once by the signal's default
action (a shell reports it as the same status, 130 for Ctrl-C), rather than through Python's handler, which
printed a ``KeyboardInterrupt`` traceback after the command's one line. The default action is the kernel's: it
ends a process whose exit hangs in C code (a join, a server's clean-up), where no Python handler runs until
the main thread runs Python again (ignored, only SIGKILL ended it)."""


def _stop_came() -> bool:
    """Whether a stop signal came in the command running under :func:`unwind_on_sigterm` (read through a
    call: set by its handlers, which a type checker does not see)."""
    return _stopped_by is not None


def raise_if_stopped() -> None:
    """Raise again the exception of a stop signal that came but did not unwind the command: Python code run
    from C may have its exception discarded there. On Python 3.13 the import of onnxruntime's compiled module
    (as the model loads) looks up a module attribute that is missing, and Python reads a property to word
    that AttributeError; a signal handler run there has its exception dropped with it. Ctrl-C was then
    ignored and ``score`` ran on to the end and exited 0; a SIGTERM too, and every later one with it (raised
    once), so only SIGKILL ended the run, leaving its temporary file. Call it where a command goes on with
    its work (never while it unwinds); a no-op outside :func:`unwind_on_sigterm` or when no signal came."""
    global _stop_lost
    if _stopped_by is not None:
        _stop_lost = False  # (unwinding now: a stop signal while it cleans up is ignored again)
        raise _stopped_by


@contextlib.contextmanager
def unwind_on_sigterm() -> Iterator[None]:
    """Make SIGTERM (``timeout`` in a cron line, ``docker stop``, a Kubernetes Job cancelled) end a command
    like Ctrl-C: by default it killed the process on the spot, and ``score`` left its hidden
    ``.OUTPUT.<pid>...partial`` file (already gigabytes for a CSV or Parquet output) in OUTPUT's folder, one
    more per run that was stopped. SIGHUP (an ssh session dropped, a terminal closed) likewise, where the
    platform has it and it is not ignored (``nohup`` ignores it: the run goes on). Raised once; a second stop
    while cleaning up is ignored (SIGKILL still ends it). Ctrl-C (SIGINT, while Python's own handler is in
    place) raises a ``KeyboardInterrupt`` as it would (an :class:`Interrupted`); all are noted for
    :func:`raise_if_stopped`. Only on the main thread (where signal handlers run); the previous handlers are put
    back after. Re-entrant: inside another one (``main()`` runs every command under one, and the commands that
    write under their own, to say what became of their output) it changes nothing, so a stop raised once stays
    raised once."""
    global _stopped_by, _unwinding, _stop_lost
    if threading.current_thread() is not threading.main_thread() or _unwinding:
        yield
        return

    def raise_once(first: BaseException | type[BaseException]) -> None:
        # Raised once: a second stop signal while the command cleans up is ignored, unless Python dropped the
        # first one's exception (see _stop_lost); raised again, it is the first one's (a Ctrl-C after a dropped
        # SIGTERM unwinds as SIGTERM, as the command's line says)
        global _stopped_by, _stop_lost
        if _stopped_by is None or _stop_lost:
            _stop_lost = False
            _stopped_by = _stopped_by or first
            raise _stopped_by

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise_once(Terminated(signum))

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise_once(Interrupted)  # (not KeyboardInterrupt itself: see Interrupted)

    def quiet_when_stopped(unraisable: sys.UnraisableHookArgs) -> None:
        # A stop raised where Python cannot raise it (a weakref callback of the import system, a __del__) is
        # discarded with "Exception ignored in ..." and a traceback on stderr: the command still stops (see
        # raise_if_stopped), and says so in one line; the traceback read as a crash. Others are shown.
        global _stop_lost
        if not (_stopped_by is not None and isinstance(unraisable.exc_value, Terminated | KeyboardInterrupt)):
            previous_unraisable(unraisable)
        else:
            _stop_lost = True

    _stopped_by, _unwinding, _stop_lost = None, True, False
    previous_unraisable = sys.unraisablehook
    sys.unraisablehook = quiet_when_stopped
    previous = signal.getsignal(signal.SIGTERM)
    ignored = previous == signal.SIG_IGN  # (ignored by the parent, as nohup does SIGHUP: left as it is)
    if not ignored:
        signal.signal(signal.SIGTERM, terminate)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:  # (not one of the program's own, nor SIGINT ignored)
        signal.signal(signal.SIGINT, interrupt)
    hangup = getattr(signal, "SIGHUP", None)  # (not on Windows)
    if hangup is not None and signal.getsignal(hangup) != signal.SIG_DFL:
        hangup = None  # nohup's SIG_IGN, or the program's own handler: left as it is
    if hangup is not None:
        signal.signal(hangup, terminate)
    try:
        yield
    finally:
        if exits_after and _stop_came():
            # The process ends once main() returns: a further stop as it exits ends it now, by the signal (see
            # exits_after; before: a KeyboardInterrupt traceback after its one line)
            for stop in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
                if stop is not None and signal.getsignal(stop) != signal.SIG_IGN:
                    signal.signal(stop, signal.SIG_DFL)
            ignored, previous_int, hangup = True, None, None
        if not ignored:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)
        if hangup is not None:
            signal.signal(hangup, signal.SIG_DFL)
        sys.unraisablehook = previous_unraisable
        _stopped_by, _unwinding, _stop_lost = None, False, False
