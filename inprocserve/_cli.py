"""The command line's shape: one parser, one small function per subcommand that adds it.

Each ``add_*`` function registers a subcommand and the function that runs it; a new command is one more
function in ``COMMANDS``. The commands themselves live in ``_cli_models`` (files on disk) and ``_cli_status``
(a running app), so this module stays a table of contents.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import sys
from collections.abc import Callable, Sequence

from ._cli_common import Subparsers, Terminated, unwind_on_sigterm
from ._cli_control import CONTROL_COMMANDS
from ._cli_models import add_inspect, add_quantize, add_validate
from ._cli_score import add_score
from ._cli_status import add_status

__all__ = ["COMMANDS", "build_parser", "main", "version_line"]

DESCRIPTION = """\
Inspect, validate and quantize ONNX models for inprocserve, read a running app's status, and switch,
roll back, canary or kill a model across the whole fleet.

examples:
  python -m inprocserve inspect models/fraud/2/model.onnx
  python -m inprocserve validate models/
  python -m inprocserve validate --json models/ > report.json
  python -m inprocserve quantize models/fraud/2/model.onnx fraud-int8.onnx
  python -m inprocserve score models/fraud/2/model.onnx rows.npy answers.npz
  python -m inprocserve status http://127.0.0.1:8000
  python -m inprocserve status --json --token-file /run/secrets/admin_token http://127.0.0.1:8000
  python -m inprocserve switch models/ fraud 3       # every worker and host follows
  python -m inprocserve canary models/ fraud 4 10    # 10 % of users, sticky

Run "python -m inprocserve COMMAND --help" for a command's options and examples.
Exit status: 0 when all is well; 1 when the command ran and found a problem (a model that does not load,
an app that is not healthy, a change refused); 2 when it could not run at all (a usage error, or a file,
folder or URL named on the command line that is missing or cannot be read); 141 when the reader of its
output went away (`| head`), as for a program stopped by SIGPIPE; 130, 143 or 129 when stopped by Ctrl-C,
SIGTERM or SIGHUP (one line says so; no temporary file is left).
"""

AddCommand = Callable[[Subparsers], None]

COMMANDS: tuple[AddCommand, ...] = (add_inspect, add_validate, add_quantize, add_score, add_status, *CONTROL_COMMANDS)
"""The subcommands, in the order ``--help`` lists them."""


def version_line() -> str:
    """``inprocserve X (onnxruntime Y, Python Z)``: what a bug report needs, without importing onnxruntime."""
    from . import __version__
    from ._ort_rules import onnxruntime_version

    try:
        runtime = onnxruntime_version()
    except ImportError:
        runtime = "not installed"
    return f"inprocserve {__version__} (onnxruntime {runtime}, Python {platform.python_version()})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inprocserve",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit status (0 ok, 1 problems found, 2 could not run; 141 when the
    reader of its output went away, as for a program stopped by SIGPIPE; 130, 143 or 129 when stopped by
    Ctrl-C, SIGTERM or SIGHUP)."""
    args = build_parser().parse_args(argv)
    try:
        # SIGTERM and SIGHUP unwind every command as Ctrl-C does: `status`, `inspect` and `validate` (a
        # `timeout` around a health check, a cancelled CI job) were killed by it with nothing said.
        with unwind_on_sigterm():
            status = int(args.run(args))
        sys.stdout.flush()  # (a reader gone shows here, not as "Exception ignored" at exit)
    except (KeyboardInterrupt, Terminated) as exc:
        # Ctrl-C in `status` waiting on a hung app, or in `inspect` and `validate` waiting on a remote model's
        # server, ended in a KeyboardInterrupt traceback. They only read, so there is nothing to undo or to
        # check; the commands that write (score, quantize, the fleet commands) say what became of their output.
        stop = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        with contextlib.suppress(OSError):
            print(f"error: stopped by {stop.name} before {args.command} finished", file=sys.stderr)
        return 128 + stop
    except BrokenPipeError:
        # `status --json URL | head`, `validate --json models/ | head`: the reader went away. That printed a
        # BrokenPipeError traceback and exited 1 ("found a problem"), after a control change was written.
        # Python's advice (docs of the signal module, "Note on SIGPIPE"): point stdout at /dev/null, so the
        # flush at exit fails no more, and exit as a program stopped by SIGPIPE does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return status
