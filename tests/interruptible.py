"""``preexec_fn`` for a child a test stops with SIGINT, as Ctrl-C stops a terminal's foreground job; a
quantize command started so and held until it measures; and the command line run with a stop signal Python
drops as a model loads."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["STOPPED_WHILE_ONNXRUNTIME_LOADS", "interruptible", "measuring", "signal_dropped_as_it_loads"]


def interruptible() -> None:
    """In the child before it runs Python: Ctrl-C's signal as a terminal gives it. A shell ignores SIGINT in
    the commands it starts in the background (a CI runner's job may be one), the child inherits that, and
    Python then installs no KeyboardInterrupt handler: the test's SIGINT did nothing (daphne and waitress,
    which leave SIGINT to Python, then served on until the test killed them)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def measuring(command: Sequence[str], folder: Path) -> Iterator[subprocess.Popen[str]]:
    """``command`` (a ``quantize`` into ``folder``) started so that SIGINT stops it (see :func:`interruptible`),
    once it measures: its temporary file is in ``folder`` (or it ended, or 45 s passed). Killed on the way out
    if it still runs (a failed test leaves no command running into the next tests)."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible
    ) as process:
        try:
            deadline = time.monotonic() + 45
            while not any(folder.iterdir()) and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.05)
            yield process
        finally:
            if process.poll() is None:
                process.kill()


def signal_dropped_as_it_loads(module: str, loader: str) -> str:
    """A script (``python -c SCRIPT SIGNUM ARGS...``) that runs ``python -m inprocserve ARGS...`` with signal
    ``SIGNUM`` raised in a finalizer as ``module.loader`` (the command's model load) is called. Python drops a
    finalizer's exception ("Exception ignored in"), as it drops the one a handler raises while onnxruntime's
    compiled module initializes (Python 3.13) or in the import system's callbacks: only the command's
    ``raise_if_stopped()`` sees that the stop came."""
    return f"""
import runpy, signal, sys
import {module} as loading
signal.signal(signal.SIGINT, signal.default_int_handler)  # (see tests/interruptible.py)
signal_number = int(sys.argv.pop(1))
load = loading.{loader}
class Finalized:
    def __del__(self):
        signal.raise_signal(signal_number)
def load_with_a_finalizer(*args, **kwargs):
    Finalized()
    return load(*args, **kwargs)
loading.{loader} = load_with_a_finalizer
runpy.run_module("inprocserve", run_name="__main__")
"""


STOPPED_WHILE_ONNXRUNTIME_LOADS = """
import os, runpy, signal, sys, threading, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # (see tests/interruptible.py)
signal_number = int(sys.argv.pop(1))
def stop():
    while "onnxruntime.capi.onnxruntime_pybind11_state" not in sys.modules:
        time.sleep(0.0002)
    os.kill(os.getpid(), signal_number)
threading.Thread(target=stop, daemon=True).start()
runpy.run_module("inprocserve", run_name="__main__")
"""
"""A script (``python -c SCRIPT SIGNUM ARGS...``) that runs ``python -m inprocserve ARGS...`` with signal
``SIGNUM`` sent as soon as onnxruntime's compiled module begins to initialize (as the first model loads): its
init turns the handler's exception into "ImportError: initialization failed"."""
