"""python -m inprocserve: inspect, validate and quantize models, and read a running app's status.

The commands live in ``inprocserve._cli`` and the modules it names; this file is only the entry point.
"""

from __future__ import annotations

import sys

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    from . import _cli_common

    _cli_common.exits_after = True
    sys.exit(main())
