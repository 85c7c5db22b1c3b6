"""python -m inprocserve: inspect, validate and quantize models, and read a running app's status.

The commands live in ``inprocserve._cli`` and the modules it names; this file is only the entry point, both
for ``python -m inprocserve`` and for the installed ``inprocserve`` command (pip's script runs
``from inprocserve.__main__ import main; sys.exit(main())``).
"""

from __future__ import annotations

import linecache
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from . import _cli, _cli_common

__all__ = ["main"]

_COMMAND = "inprocserve"  # the installed command's name (pyproject.toml's [project.scripts])


def main(argv: Sequence[str] | None = None) -> int:
    """:func:`inprocserve._cli.main`. Run as the process's own entry point (``python -m inprocserve``, or the
    installed command's script, whose ``__main__`` holds this function), the process ends once it returns: a
    stopped command's process then ignores further stop signals (see ``_cli_common.exits_after``). Called
    from other code (a test, a program of the user's), the process goes on: its handlers are put back."""
    if _process_entry_point():
        _cli_common.exits_after = True
    return _cli.main(argv)


def _process_entry_point() -> bool:
    """Whether :func:`main` runs as the process's own entry point: ``python -m inprocserve`` (this module is
    ``__main__``), or the installed command's script, whose ``__main__`` holds ``main`` and runs as the command
    (pip's script takes ``.exe`` or ``-script.py`` off ``sys.argv[0]``; run through a link of another name,
    it is judged by the script the link names). A program of the user's that imported
    ``main`` into its own ``__main__`` holds it too, and goes on once it returns: taken for the command, it was
    left with SIG_DFL on its stop signals after a stopped command, and its next Ctrl-C killed it, its own
    clean-up skipped; one named ``inprocserve`` too (a wrapper of the user's own): only a script whose call is
    ``sys.exit(main())`` is the command's."""
    if getattr(sys.modules.get("__main__"), "main", None) is not main:
        return False
    if __name__ == "__main__":  # (python -m inprocserve)
        return True
    if not sys.argv or not _exits_with_it(sys._getframe(2)):
        return False
    launched = Path(sys.argv[0])
    if launched.name == _COMMAND:
        return True
    # Run through a link of another name to the installed script (``pipx install --suffix=@2`` exposes
    # ``inprocserve@2``; an alias): by its own name only, it was taken for a program of the user's, and a second
    # Ctrl-C in a stopped command's exit path was ignored (a hung exit ended by SIGKILL only).
    try:
        return launched.resolve().name == _COMMAND
    except (OSError, RuntimeError):  # (a link loop: RuntimeError before Python 3.13)
        return False


def _exits_with_it(caller: FrameType | None) -> bool:
    """Whether ``caller`` (the frame that called :func:`main`) ends the process with what it returns: the line of
    the call is ``sys.exit(main())``, as in the scripts that pip, uv and conda write. A line that cannot be read
    (a Windows launcher's zipped script, ``python -c``) is taken to (judged by the name alone, as before)."""
    if caller is None:
        return False
    line = linecache.getline(caller.f_code.co_filename, caller.f_lineno, caller.f_globals)
    return not line.strip() or "sys.exit(main())" in "".join(line.split())


if __name__ == "__main__":
    sys.exit(main())
