"""What every subcommand shares: the type ``add_*`` functions take, and a parser with examples."""

from __future__ import annotations

import argparse
import sys
from typing import TypeAlias

__all__ = ["Subparsers", "add_command", "fail"]

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
