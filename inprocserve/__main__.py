"""python -m inprocserve: inspect, validate and quantize models, and read a running app's status.

The commands live in ``inprocserve._cli`` and the modules it names; this file is only the entry point, both
for ``python -m inprocserve`` and for the installed ``inprocserve`` command (pip's script runs
``from inprocserve.__main__ import main; sys.exit(main())``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import _cli, _cli_common

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """:func:`inprocserve._cli.main`. Run as the process's own entry point (``python -m inprocserve``, or the
    installed command's script, whose ``__main__`` holds this function), the process ends once it returns: a
    stopped command's process then ignores further stop signals (see ``_cli_common.exits_after``). Called
    from other code (a test, a program of the user's), the process goes on: its handlers are put back."""
    if getattr(sys.modules.get("__main__"), "main", None) is main:
        _cli_common.exits_after = True
    return _cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
