"""What a plug-in checks as its app loads (the model repository, in a pre-fork master or a replacement
worker), and how it quotes what it was given."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import _prefork
from .._brief import brief as _brief
from .._close_match import DEFAULT_CUTOFF
from .._close_match import close_match as _close_match
from .._config import ModelConfig
from .._errors import ConfigurationError, ModelLoadError
from .._repository import link_advice_as, scan_repository

# -- a plug-in's start-up and its messages -----------------------------------------------------------------
# What a plug-in (this repository's Flask and Django ones, a team's own for another framework or a task queue's
# workers) checks as its app loads, and how it quotes what it was given: the core's own checks and words, so
# that every plug-in refuses and says alike.


def short_repr(value: object) -> str:
    """``repr(value)`` cut short, for a message, a log line or an answer that quotes what a client or a setting
    gave: a string of more than 64 characters as its first ones and its length
    (``'nnnn...'...(10000000 characters)``), a container as its first 8 items. A client chooses its paths,
    methods and header values, and one quoted whole (megabytes) made an answer, a log line and a span as large.
    Never raises (a value whose ``repr`` raises is named by its type)."""
    return _brief(value)


def close_match(name: str, known: Iterable[str], *, cutoff: float = DEFAULT_CUTOFF) -> str | None:
    """The name among ``known`` closest to ``name``, or ``None`` if none is close enough: the ``(stable?)`` of a
    message about a typo in a setting's key or a model's name, judged as the core judges its own
    (``config.toml`` keys). ``cutoff`` (0..1, difflib's ratio) is how close: the default 0.6 also finds a name
    cut short or grown (``TIMEOUT_S`` for ``DEFAULT_TIMEOUT_S``); 0.8 a letter or two off. The work is bounded
    by the known names, whatever the length of ``name`` (which a client may choose)."""
    return _close_match(name, known, cutoff=cutoff)


def check_repository_at_start(
    repository: str | os.PathLike[str],
    *,
    config: ModelConfig | None = None,
    models: Mapping[str, ModelConfig] | None = None,
    follow_symlinks: bool = False,
) -> list[str]:
    """The start-up check of a plug-in that builds its server after the fork (the Flask and Django plug-ins'
    eager mode): :func:`inprocserve.check_repository` (no onnxruntime, so safe in a process that will fork),
    whose errors fail the app's load, except in a worker that replaces an earlier one
    (:func:`replacement_worker`), which logs them and starts: a worker whose app fails to load makes gunicorn
    stop the whole server, the workers that serve included. Pass the arguments the server will get.

    Returns:
        What the workers will serve around (a version a rollout names that is not there, stray files), to log
        once (with :func:`replace_link_advice` first); ``[]`` when a replacement worker started past a failed check.

    Raises:
        ConfigurationError, ModelLoadError: the repository is not a folder, a ``config.toml`` is invalid, a model
            file is not a readable ONNX model..., outside a replacement worker.
    """
    return _prefork.check_at_start(os.fspath(repository), config=config, models=models, follow_symlinks=follow_symlinks)


def refuse_at_start(error: ConfigurationError | ModelLoadError, *, repository: str | os.PathLike[str]) -> None:
    """Raise ``error``, something a plug-in found wrong with the model repository as its app loads (a
    repository that is not a folder: a release swapped in by two renames, a network mount briefly gone),
    unless this process is a worker that replaces an earlier one (:func:`replacement_worker`): there, log it
    once and return, so that the worker starts, serves what loads and builds its server again once the folder
    is back. For the repository's state only: a setting that is wrong is wrong in every worker, and raises.
    :func:`check_repository_at_start` calls it for its own errors; call it for a check of your own.

    Args:
        error: What was found wrong.
        repository: The model repository's folder: a missing one is logged as missing, once per worker, however
            many checks find it; another error once per worker and message. The line is an error of the
            ``inprocserve._prefork`` logger, or on stderr where logging is not set up (a gunicorn worker).

    Raises:
        ConfigurationError, ModelLoadError: ``error``, outside a replacement worker.
    """
    _prefork.refuse_at_start(error, repository=repository)


def replacement_worker() -> str | None:
    """Whether this process loads its app as a worker that replaces an earlier one: a gunicorn worker
    started after the server's first ones (recycled by ``--max-requests``, replaced after a crash or a
    timeout, added by ``TTIN``, started by a ``HUP`` reload), a respawned uWSGI worker, or a uWSGI process
    after a graceful reload. Where a first start refuses a broken repository, such a worker starts
    (:func:`refuse_at_start`). Call it as the app loads (it finds the worker on the call stack).

    Returns:
        A description of the worker, for a log line (``"gunicorn worker 4242 was started by a reload (HUP) of
        a running server"``); ``None`` for a first start, a ``--preload`` master, or no pre-fork server.
    """
    return _prefork.replacement_worker()


@dataclass(frozen=True)
class RepositoryLayout:
    """What :func:`repository_layout` found in a model repository.

    Attributes:
        models: The names of the model folders, sorted.
        problems: What a server skips, in words (stray files, badly named folders, symbolic links it refuses,
            unreadable folders), each quoting the path.
    """

    models: tuple[str, ...]
    problems: tuple[str, ...]


def repository_layout(repository: str | os.PathLike[str], *, follow_symlinks: bool = False) -> RepositoryLayout:
    """The models in ``repository`` and what a server would skip, found as a server finds them (its
    ``follow_symlinks`` too), by listing folders only: no model file is read, so it suits a settings check
    that runs often (Django's ``manage.py check``). :func:`inprocserve.check_repository` reads each model's
    signature as well.

    Raises:
        ConfigurationError: ``repository`` is not a folder, or cannot be read.
    """
    scan = scan_repository(Path(repository), follow_symlinks=follow_symlinks)
    return RepositoryLayout(models=tuple(sorted(scan.models)), problems=tuple(scan.problems))


def replace_link_advice(problem: str, advice: str) -> str:
    """``problem`` (one of :func:`check_repository_at_start`'s, :func:`repository_layout`'s or a version's load
    error) with its advice about symbolic links, which names the server's argument (``pass
    follow_symlinks=True to the Server``), given as ``advice`` instead: the plug-in's setting that passes it
    (``set INPROCSERVE_FOLLOW_SYMLINKS = True``), since its user builds no server. Other problems are returned
    as they are, and so is a path that holds the same words."""
    return link_advice_as(problem, advice)
