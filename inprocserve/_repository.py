"""Finds models and versions on disk: ``<repository>/<model>/<version>/model.onnx``, or ``remote.toml`` for a
version served by an Open Inference Protocol server (see :mod:`inprocserve._remote_model`).

Pure file-system logic, no onnxruntime: the server asks it what exists, decides what to load, and
calls it again on every refresh to notice added and removed versions.

Symbolic links are refused by default: a model folder, version folder or ``model.onnx`` that is a link is
skipped and reported, because a link lets whoever can write its target change what is served without
touching the repository. ``follow_symlinks=True`` (``Server(..., follow_symlinks=True)``) accepts them.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ._brief import brief
from ._errors import ConfigurationError, ModelNotFoundError
from ._remote_model import REMOTE_FILENAME

__all__ = [
    "MODEL_FILENAME",
    "REMOTE_FILENAME",
    "ModelSource",
    "RepositoryScan",
    "is_remote",
    "scan_repository",
    "validate_model_name",
]

MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.toml"
# Array files a model's config.toml may name beside it (warm-up inputs, drift reference): data, not stray files.
DATA_SUFFIXES = (".npz", ".npy")

# A name is one path component of letters, digits, '.', '_' and '-', not starting with a dot, so it can
# never climb out of the repository (no '..', no separators, no absolute paths) nor hide as a dot-file.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")

MAX_VERSION_DIGITS = 18
"""Longest version number: what ``/v2/models/<name>/versions/<version>`` takes, within the control file's and
the metrics' 64-bit integers."""
_VERSION = re.compile(rf"[1-9][0-9]{{0,{MAX_VERSION_DIGITS - 1}}}")


def is_version_name(name: str) -> bool:
    """Whether ``name`` names a version folder as the scan reads one (``7``; not ``07``, ``٣`` or 19 digits)."""
    return _VERSION.fullmatch(name) is not None


def is_remote(path: Path) -> bool:
    """Whether a version's file (a value of :attr:`ModelSource.versions`) is a ``remote.toml``."""
    return path.name == REMOTE_FILENAME


def validate_model_name(name: object) -> str:
    """Return ``name`` if it is a safe model name, else raise ``ModelNotFoundError`` saying why."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    if not _NAME.fullmatch(name) or ".." in name:
        raise ModelNotFoundError(
            f"invalid model name {brief(name)}: use 1-128 letters, digits, '.', '_' or '-', not starting with '.' "
            "and without path separators or '..'",
            model=name,
        )
    return name


@dataclass(frozen=True, slots=True)
class ModelSource:
    """One model folder as found on disk."""

    name: str
    folder: Path
    versions: dict[int, Path]
    """Version -> path of its ``model.onnx``, or of its ``remote.toml`` (:func:`is_remote`)."""
    config_path: Path | None


@dataclass(frozen=True, slots=True)
class RepositoryScan:
    """What a scan found, and what it had to skip (human-readable problems)."""

    models: dict[str, ModelSource] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    unreadable: set[str] = field(default_factory=set)
    """Names of model folders that could not be read (permissions, I/O errors): their loaded versions are
    left as they are, neither reloaded nor unloaded, until a scan reads them again."""


_LINK_ADVICE = "pass follow_symlinks=True to the Server"
_LINK_HINT = f"symbolic links are refused; copy the files in, or {_LINK_ADVICE}"


LOAD_LINK_ADVICE = "let the server follow links with Server(..., follow_symlinks=True)"
"""How a version's load (its file checks) ends the refusal of a link: advice to a Server's user, as
``_LINK_ADVICE`` is the scan's."""


def link_advice_as(problem: str, advice: str) -> str:
    """``problem`` (the repository scan's or a version's load's) with its advice to a Server's user about symbolic
    links (``pass follow_symlinks=True to the Server``) given as ``advice``: a plug-in's user was told of an
    argument of a Server the plug-in builds, not of the setting that passes it (``set
    INPROCSERVE['FOLLOW_SYMLINKS'] = True``), and a command's user not of its option (``pass
    --follow-symlinks``). Only the advice that ends ``problem`` is replaced: a path holding the same words (a
    folder named after them) is quoted as it is."""
    for server_advice in (_LINK_ADVICE, LOAD_LINK_ADVICE):
        if problem.endswith(server_advice):
            return problem.removesuffix(server_advice) + advice
    return problem


def scan_repository(repository: Path, *, follow_symlinks: bool = False, only: str | None = None) -> RepositoryScan:
    """Scan ``repository`` for models; malformed entries are skipped and listed in ``problems``.

    Without ``follow_symlinks`` a model folder, version folder or model file that is a symbolic link is
    skipped and listed in ``problems`` too. With ``only``, the folder of that model alone is scanned, as a
    whole scan would (a server that looks for one model's versions: a scan of every model for each of the
    models a control revision waits for took seconds, under the lifecycle lock, with a few hundred models).
    """
    try:
        if not repository.is_dir():
            raise ConfigurationError(f"model repository {str(repository)!r} is not a directory{_file_hint(repository)}")
        if only is None:
            folders = sorted(repository.iterdir())
        else:
            folder = repository / only
            folders = [folder] if folder.name == only and os.path.lexists(folder) else []
    except OSError as exc:
        raise ConfigurationError(f"model repository {str(repository)!r} cannot be read: {_reason(exc)}") from None
    result = RepositoryScan()
    skipped = _Skipped(repository, result.problems)
    for folder in folders:
        if folder.name.startswith("."):
            continue
        try:
            if not follow_symlinks and folder.is_symlink():
                result.problems.append(f"{_shown(folder)}: the model folder is a symbolic link; {_LINK_HINT}")
                continue
            if not folder.is_dir():
                gone = _gone(folder, wanted="a model folder")  # (a model's entry: not "a version folder")
                if gone is not None:
                    result.problems.extend(gone)
                    continue
                skipped.add(f"{_shown(folder)}: not a model folder (expected <model>/<version>/{MODEL_FILENAME})")
                continue
            try:
                name = validate_model_name(folder.name)
            except ModelNotFoundError as exc:
                skipped.add(f"{_shown(folder)}: {exc}")
                continue
            problems: list[str] = []
            source = _scan_model(name, folder, problems, follow_symlinks=follow_symlinks)
        except OSError as exc:  # one unreadable folder must not hide the others
            result.problems.append(
                f"{_shown(folder)}: cannot be read ({_reason(exc)}); what is loaded from it keeps serving until it can"
            )
            result.unreadable.add(folder.name)
            continue
        result.problems.extend(problems)
        result.models[name] = source
    skipped.close()
    return result


SHOWN_SKIPPED = 20
"""Entries of one folder named in problems as stray files or badly named folders; the rest are counted in one
more problem. A data set synced into a model folder made a warning per file (thousands, in the log at start
and in ``refresh()``'s and ``validate``'s answers)."""


class _Skipped:
    """The stray entries of one folder, appended to ``problems`` up to :data:`SHOWN_SKIPPED`, then counted."""

    def __init__(self, folder: Path, problems: list[str]) -> None:
        self._folder, self._problems, self._count = folder, problems, 0

    def add(self, problem: str) -> None:
        self._count += 1
        if self._count <= SHOWN_SKIPPED:
            self._problems.append(problem)

    def close(self) -> None:
        if self._count > SHOWN_SKIPPED:
            more = self._count - SHOWN_SKIPPED
            self._problems.append(f"{_shown(self._folder)}: {more} more entries skipped like those above")


def _file_hint(repository: Path) -> str:
    """For a model file given as the repository (``validate models/fraud/2/model.onnx``): the repository that
    holds it, and the command that checks one file."""
    if repository.name != MODEL_FILENAME or not repository.is_file():
        return ""
    return (
        f": it is a model file; python -m inprocserve validate {repository.parent.parent.parent} checks the "
        f"repository that holds it, and python -m inprocserve inspect {repository} the file alone"
    )


def _gone(path: Path, *, follow_symlinks: bool = True, wanted: str = "a version folder") -> list[str] | None:
    """What to report of a listed entry that is no file or folder now, or ``None`` if it is one of those.

    Removed since the listing (a version or model being deleted while the scan ran): nothing, the next scan
    does not list it. A link whose target is gone (a release folder deleted while a version still points at
    it): that, not "unexpected file" or "not a model folder", which sent people looking for a stray file."""
    if path.exists():
        return None
    if not path.is_symlink():
        return []
    if not follow_symlinks:
        return [f"{_shown(path)}: a symbolic link; {_LINK_HINT}"]
    try:
        target = os.readlink(path)
    except OSError:  # (removed since)
        return []
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # (-> itself, or a ring of links: there, but never reaching a folder)
            return [
                f"{_shown(path)}: a symbolic link loop (it points to {_shown(target)}, which leads back to it); "
                f"point it at {wanted}, or remove the link"
            ]
    return [
        f"{_shown(path)}: a symbolic link to {_shown(target)}, which does not exist (restore it, or remove the link)"
    ]


def _shown(path: str | Path) -> str:
    """``path`` for a problem: as it is, or, when a name in it holds a line break, a terminal escape or bytes
    that are not UTF-8 (a lone surrogate), with those written as Python escapes (``\\n``, ``\\x1b``,
    ``\\udcff``): each problem is one line of the log, and one that a UTF-8 log file or JSON reader takes."""
    text = str(path)
    return text if text.isprintable() else repr(text)[1:-1]


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def _scan_model(name: str, folder: Path, problems: list[str], *, follow_symlinks: bool) -> ModelSource:
    versions: dict[int, Path] = {}
    skipped = _Skipped(folder, problems)
    for entry in sorted(folder.iterdir()):
        if entry.name == CONFIG_FILENAME or entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix in DATA_SUFFIXES:
            continue
        if not entry.is_dir() and (gone := _gone(entry, follow_symlinks=follow_symlinks)) is not None:
            problems.extend(gone)
            continue
        if not entry.is_dir():
            hint = f"; move it into a version folder: {folder}/1/{MODEL_FILENAME}" if entry.suffix == ".onnx" else ""
            if entry.name == MODEL_FILENAME and name.isdecimal():  # (models/fraud given as the repository)
                hint = (
                    f"; {folder.parent} looks like a model folder, not a repository: pass the folder that holds "
                    f"it ({folder.parent.parent}) as the repository, or move {name} into a model folder "
                    f"({folder.parent}/<model>/{name}/{MODEL_FILENAME})"
                )
            skipped.add(
                f"{_shown(entry)}: unexpected file in a model folder (only version folders, {CONFIG_FILENAME} "
                f"and {'/'.join(DATA_SUFFIXES)} data files){hint}"
            )
            continue
        # ASCII digits only (int() takes the Arabic-Indic "٣" for 3), and at most 18 of them: a longer number
        # is no version anyone can name (/v2 paths take 18 digits, the control file and metrics int64).
        if not _VERSION.fullmatch(entry.name):
            skipped.add(
                f"{_shown(entry)}: version folders must be positive integers of at most {MAX_VERSION_DIGITS} digits, "
                "without leading zeros"
            )
            continue
        model_file, remote_file = entry / MODEL_FILENAME, entry / REMOTE_FILENAME
        if model_file.is_file() and remote_file.is_file():
            problems.append(
                f"{entry}: holds both {MODEL_FILENAME} and {REMOTE_FILENAME}; keep one (the model runs here, or "
                "on the server that remote.toml names)"
            )
            continue
        if remote_file.is_file() or (remote_file.is_symlink() and not model_file.exists()):
            model_file = remote_file
        if not follow_symlinks and (entry.is_symlink() or model_file.is_symlink()):
            what = "version folder" if entry.is_symlink() else model_file.name
            problems.append(f"{entry}: the {what} is a symbolic link; {_LINK_HINT}")
            continue
        if not model_file.is_file():
            # A link to a release's model file that was deleted: no model file, said as such ("missing model.onnx"
            # sent people looking for a file that is there, as a link)
            if gone := _gone(model_file, wanted="a model file"):
                problems.extend(gone)
                continue
            there = [path.name for path in (model_file, remote_file) if path.exists()]  # (a folder, a pipe)
            problems.append(
                f"{entry}: {there[0]} is not a regular file (a folder, a pipe or a device); write the file there"
                if there
                else f"{entry}: missing {MODEL_FILENAME} (or {REMOTE_FILENAME} for a remote model)"
            )
            continue
        versions[int(entry.name)] = model_file
    skipped.close()
    if not versions:
        problems.append(
            f"{folder}: model {name!r} has no version folder with a {MODEL_FILENAME} (or {REMOTE_FILENAME})"
        )
    config_path = folder / CONFIG_FILENAME
    # Anything at config.toml's place is read (a folder or a dangling link fails the model's load, saying so):
    # left out, the model would serve on defaults with no word of the configuration it was given.
    return ModelSource(
        name, folder, versions, config_path if config_path.exists() or config_path.is_symlink() else None
    )
