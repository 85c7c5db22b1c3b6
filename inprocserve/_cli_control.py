"""``switch|rollback|canary|kill|resume|reload REPOSITORY ...``: fleet-wide rollout changes from a shell.

Each command writes the repository's control file, which every server on that repository follows (see
docs/operations.md, "Running a fleet"). ``switch`` and ``canary`` load the version they name first, and
``rollback`` the version it goes back to, as ``validate`` does (onnxruntime is imported then), and refuse
one that does not load; ``--no-load-check``
skips that (a host that cannot load it, such as one without the fleet's GPU), and the other commands load
nothing.
"""

from __future__ import annotations

import argparse
import errno
import json
import signal
import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from ._cli_common import (
    CANNOT_RUN,
    OK,
    PROBLEMS,
    Subparsers,
    Terminated,
    add_command,
    fail,
    interrupted_by,
    printable,
    unwind_on_sigterm,
)
from ._close_match import TYPO_CUTOFF, close_match
from ._config import ModelConfig, load_model_config
from ._control import (
    CONTROL_FILENAME,
    Control,
    ControlFile,
    ControlFileUnavailableError,
    ModelControl,
    nothing_to_roll_back,
    switched,
    validate_percent,
)
from ._errors import ConfigurationError, InprocserveError
from ._repository import MODEL_FILENAME, REMOTE_FILENAME, ModelSource, is_version_name, link_advice_as, scan_repository
from ._signature import Signature, incompatibilities

__all__ = ["CONTROL_COMMANDS"]

_TRIES = 3
"""How often a rollback loads the version to go back to, or a switch the version serving now, when other
writers' switches keep moving it."""


class _TargetMoved(Exception):
    """Raised inside the control file's lock: the version a rollback goes back to, or the one a switch's
    compatibility gate compared with, is not the one it loaded (a signal to try again, never raised to a
    caller)."""


def _control(args: argparse.Namespace) -> int:
    """Write one fleet-wide change to the repository's control file and print what was written.

    Exit status 0 when written; 1 when the change is refused (unknown model or version, invalid control
    file, nothing to roll back to); 2 when it could not run (a usage error, a repository that is not a
    folder, or the control file or its lock could not be opened or written, or the lock stayed held by
    another writer); 130, 143 or 129 when stopped by Ctrl-C, SIGTERM or SIGHUP (one line, no traceback, no
    temporary file left)."""
    repository = Path(args.repository)
    if args.command == "canary" and args.version == _CONFIG and args.percent is not None:
        return fail(
            f"`canary ... config` hands the canary back to the model's configuration and takes no PERCENT (got "
            f"{args.percent:g}); to send users to a version, name it: `canary {args.repository} {args.model} VERSION "
            f"{args.percent:g}`",
            CANNOT_RUN,
        )
    if args.command == "canary" and args.version not in (None, _CONFIG) and args.percent is None:
        return fail(
            f"canary {args.version} needs a PERCENT (e.g. `canary {args.repository} {args.model} {args.version} "
            f"10`); `canary {args.repository} {args.model} none` stops the canary",
            CANNOT_RUN,
        )
    if args.command == "canary" and args.version is None and args.percent is not None:
        # (it removed the canary and exited 0: `canary models/ fraud none 50` reads as "50 % of something")
        return fail(
            f"`canary ... none` stops the canary and takes no PERCENT (got {args.percent:g}); to send users "
            f"to a version, name it: `canary {args.repository} {args.model} VERSION {args.percent:g}`",
            CANNOT_RUN,
        )
    try:
        is_folder = repository.is_dir()
    except OSError as exc:  # (is_dir passes EACCES and ESTALE through: a traceback)
        # the hint by the error: a stale NFS handle was blamed on a parent folder's permissions
        if exc.errno in (errno.EACCES, errno.EPERM):
            hint = " a parent folder this user may not search?"
        elif exc.errno == getattr(errno, "ESTALE", None):  # (not defined on Windows)
            hint = " the network share it is on was changed or remounted? look at it again, or remount it;"
        else:
            hint = ""
        return fail(
            f"the model repository {args.repository} cannot be looked at ({exc.strerror or exc}):{hint} nothing "
            "was written",
            CANNOT_RUN,
        )
    if not is_folder:
        return fail(f"the model repository {args.repository} is not a folder", CANNOT_RUN)
    versions = _version_folders(repository)
    if versions:  # (`reload models/fraud` wrote a control file there that no server reads, and exited 0)
        return fail(
            f"{args.repository} looks like a model folder, not a repository (it holds version folders: "
            f"{', '.join(versions)}): give the folder that holds it ({repository.resolve().parent}); nothing was "
            "written",
            CANNOT_RUN,
        )
    try:
        # SIGTERM or SIGHUP (a `timeout` around the command, a cancelled CI job, a dropped ssh session) killed it
        # on the spot: exit 143 with nothing said, and its temporary file left beside the control file when it
        # came before the rename. Now it unwinds as Ctrl-C does: the temporary file is removed, one line says so.
        with unwind_on_sigterm():
            written = _change(args, repository)
    except (KeyboardInterrupt, Terminated) as exc:  # (Ctrl-C while it waited for another writer's lock: a traceback)
        stop = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        return fail(
            f"stopped by {stop.name} before the change was confirmed (nothing is written while it waits for another "
            f"writer's lock); read {repository / CONTROL_FILENAME} to see whether it was",
            128 + stop.value,
        )
    except (ControlFileUnavailableError, OSError) as exc:
        return fail(str(exc), CANNOT_RUN)
    except (InprocserveError, ValueError) as exc:
        return fail(str(exc), PROBLEMS)
    print(json.dumps(written.to_dict(), indent=2))
    return OK


def _change(args: argparse.Namespace, repository: Path) -> Control:
    """Check the change against the repository and write it; the written control file's contents.

    Raises:
        ControlFileUnavailableError, OSError: the control file or its lock could not be opened or written.
        InprocserveError, ValueError: the change is refused.
    """
    scan = scan_repository(repository, follow_symlinks=args.follow_symlinks)
    control = ControlFile(repository)
    if args.command == "reload":
        written = control.bump_reload(actor=args.actor)
    else:
        source = scan.models.get(args.model)
        clears = args.command in ("kill", "resume") or (args.command == "canary" and args.version in (None, _CONFIG))
        if source is None and clears and args.model in control.read().models:
            # A model whose folder was removed keeps serving from memory on the servers that had it loaded, and
            # the control file keeps its entry: `resume` or `canary ... none` were refused, so that entry could
            # not be cleared (nor the model killed) from a shell. These load nothing, so they are written.
            print(
                f"note: model {args.model!r} is not in the repository {repository}; changing its entry in the control "
                "file only",
                file=sys.stderr,
            )
            kill = args.command == "kill"
            if args.command == "canary":
                return control.set_model(
                    args.model, lambda state: _canary_cleared(state, args.version), actor=args.actor
                )
            return control.set_model(args.model, lambda state: replace(state, kill=kill), actor=args.actor)
        if source is None:
            # (it named neither the models there nor that nothing was written: `kill models/ frud` in an incident)
            raise InprocserveError(
                f"model {args.model!r} is not in the repository {repository} ({_models_there(args.model, scan.models)})"
                f"{_link_hint(args, scan.problems)}; nothing was written"
            )
        if args.command == "canary" and args.version == _CONFIG:
            return control.set_model(args.model, lambda state: _canary_cleared(state, _CONFIG), actor=args.actor)
        version: int | None = getattr(args, "version", None)
        if version is not None and version not in source.versions:
            known = ", ".join(map(str, sorted(source.versions))) or "none"
            # (a folder without its model file was refused with "no version 7" alone, while the folder is there)
            why = next((f": {p}" for p in scan.problems if p.startswith(f"{source.folder / str(version)}:")), "")
            # (a version refused as a link: the scan's advice to a Server's user put as this command's, which
            # then says why the link was refused)
            linked = link_advice_as(why, "leave out --no-follow-symlinks")
            raise InprocserveError(
                f"model {args.model!r} has no version {version} (versions: {known})"
                f"{linked if linked != why else why + _link_hint(args, scan.problems)}; nothing was written"
            )
        # (before the load: a percentage outside 0..100 was refused only once the version had loaded)
        percent = 0.0 if version is None or args.command != "canary" else validate_percent(args.percent)
        # A canary at 0 % sends no one to its version and no server loads it: `canary models/ fraud 4 0`, the
        # way to turn down a canary found broken, was refused because it did not load.
        sends_users = args.command != "canary" or percent > 0
        signature = None
        if version is not None and getattr(args, "load_check", False) and sends_users:
            signature = _check_loads(args, repository, source, version)
        if args.command == "switch":
            assert version is not None
            written = _switch(args, repository, control, source, version, signature)
        elif args.command == "rollback":
            written = _roll_back(args, repository, control, source, scan.problems)
        elif args.command == "canary":
            # (no canary_off_version: the servers may run with their configuration in code, a canary of another
            # version than config.toml's, and a stop recorded as config.toml's would not stop theirs)
            written = control.set_model(
                args.model,
                lambda state: (
                    _canary_cleared(state, None)
                    if version is None
                    else replace(state, canary_version=version, canary_percent=percent, canary_off=False)
                ),
                actor=args.actor,
            )
        else:
            kill = args.command == "kill"
            written = control.set_model(args.model, lambda state: replace(state, kill=kill), actor=args.actor)
    return written


def _switch(
    args: argparse.Namespace,
    repository: Path,
    control: ControlFile,
    source: ModelSource,
    version: int,
    signature: Signature | None,
) -> Control:
    """Write the switch of ``args.model`` to ``version`` (whose ``signature`` was loaded; ``None``: not
    loaded, not compared), refused when it would break the callers of the version serving now unless
    ``--force``. That version is loaded outside the control file's lock and read again inside it: another
    writer's switch that landed meanwhile was overwritten unchecked (3 over the 1 it had just put back, exit
    0), so nothing is written and the new serving version is compared, for at most ``_TRIES`` tries.

    Raises:
        InprocserveError: the signatures are incompatible (the message lists why).
        ControlFileUnavailableError: the serving version moved at every try, or the file cannot be read or
            written.
    """
    current = _configured_default(source)
    # With no stable version named, a worker that started with the newest version answers with it, but one
    # that saw the versions come one by one may answer with an older one, its gate having held the newer ones
    # back (``kept``): a switch must break the callers of neither. (The newest alone was compared: a switch
    # to the version held back was compared with itself and written, exit 0, moving every caller to it.)
    # With --no-load-check too (``signature`` None): the version recorded to roll back to is the one answering,
    # not the newest, which may be the version the gate held back (a rollback sent every worker to it).
    kept = None
    if control.read().models.get(args.model, ModelControl()).stable is None:
        kept = _gated_default(args, repository, source, current, version, signature)
    previous = current if kept is None or kept == version else kept  # (a rollback goes back to it)

    def serving(state: ModelControl) -> int | None:
        return state.stable if state.stable is not None else current

    for _ in range(_TRIES):
        named = control.read().models.get(args.model, ModelControl()).stable
        compared = named if named is not None else current
        if signature is not None and not args.force:
            _refuse_if_incompatible(args, repository, source, compared, version, signature)
            if named is None and kept is not None and kept != compared:
                _refuse_if_incompatible(args, repository, source, kept, version, signature)

        def to(state: ModelControl, compared: int | None = compared) -> ModelControl:
            if signature is not None and not args.force and serving(state) != compared:
                raise _TargetMoved  # (never loaded inside the lock: other writers wait)
            return switched(state, version, current=previous)

        try:
            return control.set_model(args.model, to, actor=args.actor)
        except _TargetMoved:  # another writer switched meanwhile: compare with what serves now
            continue
    raise ControlFileUnavailableError(
        f"model {args.model!r}: the version serving moved {_TRIES} times during this switch (other writers are "
        "switching it); nothing was written. Retry once they are done"
    )


def _roll_back(
    args: argparse.Namespace, repository: Path, control: ControlFile, source: ModelSource, problems: list[str]
) -> Control:
    """Write the rollback of ``args.model`` to its previous stable version, loaded first as ``switch`` loads
    the version it names: a previous version whose model.onnx was cut short since (a failed copy over it) was
    written unloaded, and every server of the fleet then failed to load it. The version is loaded outside the
    control file's lock (every other writer would wait for the load) and read again inside it: when another
    writer's switch moved it meanwhile, nothing is written and the new one is loaded, as
    ``Server.rollback`` does, for at most ``_TRIES`` tries.

    Raises:
        InprocserveError: nothing to roll back to, or the version is gone or does not load.
        ControlFileUnavailableError: the version moved at every try, or the file cannot be read or written.
    """
    for _ in range(_TRIES):
        checked = control.read().models.get(args.model, ModelControl()).previous_stable
        if args.load_check and checked is not None and checked in source.versions:
            _check_loads(args, repository, source, checked, what="the version to roll back to does not load: ")

        def back(state: ModelControl, checked: int | None = checked) -> ModelControl:
            previous = state.previous_stable
            if previous is None:
                raise nothing_to_roll_back(
                    args.model, state.stable if state.stable is not None else _configured_default(source)
                )
            if previous not in source.versions:  # (removed since): every worker would fall back to latest
                known = ", ".join(map(str, sorted(source.versions))) or "none"
                raise InprocserveError(
                    f"model {args.model!r}: the version to roll back to, {previous}, is not in the repository "
                    f"(versions: {known}){_link_hint(args, problems)}; nothing was written. Switch to "
                    "a version that is (`switch`)"
                )
            if args.load_check and previous != checked:  # (never loaded inside the lock: other writers wait)
                raise _TargetMoved
            return switched(state, previous)

        try:
            return control.set_model(args.model, back, actor=args.actor)
        except _TargetMoved:  # another writer switched meanwhile: load what it leaves to go back to
            continue
    raise ControlFileUnavailableError(
        f"model {args.model!r}: its previous stable version moved {_TRIES} times during this rollback "
        "(other writers are switching it); nothing was written. Retry once they are done"
    )


def _check_loads(
    args: argparse.Namespace, repository: Path, source: ModelSource, version: int, *, what: str = ""
) -> Signature:
    """Load ``version`` as ``validate`` does, before the fleet is sent to it: a folder whose name is right but
    whose model.onnx was cut short by a failed copy (or is unreadable, or is no model) was written, and every
    server then failed to load the version it was told to serve. ``what`` begins the message of a refusal.
    Returns the version's signature.

    Raises:
        InprocserveError: it does not load, or the model's config.toml cannot be read; the message says so.
    """
    try:
        return _loaded_signature(args, source, version)
    except InprocserveError as exc:
        raise InprocserveError(
            f"{what}{exc}; nothing was written (servers would fail to load it too: `python -m inprocserve validate "
            f"{repository}` checks the repository; --no-load-check writes the change unchecked)"
        ) from None


def _loaded_signature(args: argparse.Namespace, source: ModelSource, version: int) -> Signature:
    """``version``'s signature, loaded as ``validate`` loads it, once per version and command.

    Raises:
        InprocserveError: it does not load, or the model's config.toml cannot be read (the loader's message).
        KeyboardInterrupt, Terminated: a stop signal came as onnxruntime was imported or ran.
    """
    from ._cli_models import check_version  # (imports onnxruntime as the version loads: only here)

    # Once per version and command: the first switch loaded the version serving now to find the one answering,
    # then again to compare with it (and again at each try), each a session, or a remote server asked (its
    # connect timeout, when it is down).
    loaded: dict[int, Signature | InprocserveError] = vars(args).setdefault("loaded_signatures", {})
    try:
        found = loaded.get(version)
        if found is None:
            try:
                config = (
                    ModelConfig() if source.config_path is None else load_model_config(source.config_path, ignored=[])
                )
                found = check_version(
                    args.model, version, source.versions[version], config, follow_symlinks=args.follow_symlinks
                )
            except InprocserveError as exc:
                if interrupted_by(exc) is None:  # (a signal is never kept: it stops the command)
                    loaded[version] = exc
                raise
            loaded[version] = found
        if isinstance(found, InprocserveError):
            raise found
        return found
    except InprocserveError as exc:
        if (interruption := interrupted_by(exc)) is not None:  # (a signal as onnxruntime was imported or ran)
            raise interruption from None
        raise


def _refuse_if_incompatible(
    args: argparse.Namespace,
    repository: Path,
    source: ModelSource,
    serving: int | None,
    version: int,
    signature: Signature,
) -> None:
    """Refuse a switch to ``version`` (whose ``signature`` was loaded) when it would break the callers of the
    version ``serving`` now, as ``Server.switch`` does without ``force``: the CLI wrote it, exit 0, and every
    caller of the fleet then sent inputs it does not take. A serving version that is not there or does not
    load here is not compared (switching away from it is the fix).

    Raises:
        InprocserveError: the signatures are incompatible; the message lists why.
    """
    if serving is None or serving == version or serving not in source.versions:
        return
    try:
        # (the loader's message alone: the refusal's "nothing was written" was printed of a switch then written)
        current = _loaded_signature(args, source, serving)
    except InprocserveError as exc:
        print(
            printable(
                f"warning: model {args.model!r} version {serving}, which serves now, does not load here, so version "
                f"{version} was not compared with it ({exc})"
            ),
            file=sys.stderr,
        )
        return
    problems = incompatibilities(current, signature)
    if problems:
        raise InprocserveError(
            f"model {args.model!r} version {version} is not compatible with version {serving}, which serves now: "
            f"{'; '.join(problems)}; nothing was written. Once callers are ready, --force switches anyway"
        )


def _gated_default(
    args: argparse.Namespace,
    repository: Path,
    source: ModelSource,
    newest: int | None,
    version: int,
    signature: Signature | None,
) -> int | None:
    """The version a worker that saw the versions come one by one answers with by default when no stable
    version is named (neither the control file nor ``config.toml``; ``newest``: the policy's choice, else the
    configured stable version, returned as it is). Its compatibility gate lets a newer version take the
    default only if it is compatible with the one answering, so the versions up to ``newest`` are walked in
    order, as hot reload brought them in (those the version policy selects only). A version that does not
    load here is skipped, as the gate skips one that fails to load; ``version`` (``signature``) is not loaded
    again (``signature`` None, with --no-load-check: it is loaded as the others are). With --no-load-check
    (this host may not load what the fleet loads) such a version is not skipped but taken to load on the
    workers' hosts and answer, a warning naming it and why it did not load here; the next version that loads
    here, not comparable with it, is taken too."""
    if newest is None:
        return newest
    try:
        config = ModelConfig() if source.config_path is None else load_model_config(source.config_path, ignored=[])
    except ConfigurationError:
        return newest
    if config.rollout.stable is not None and config.rollout.stable in source.versions:
        return newest  # (named: it answers, and the gate compares with it)
    answering: tuple[int, Signature | None] | None = None  # (None: it did not load here, with --no-load-check)
    # Only the versions the policy had workers load as each one came (newest then): a version it never
    # selects (``specific``) never answered, and taking it for the one answering refused safe switches.
    for number in sorted(v for v in source.versions if v <= newest and config.version_policy.select([v])):
        try:
            found = (
                signature if number == version and signature is not None else _loaded_signature(args, source, number)
            )
        except InprocserveError as exc:
            if args.load_check:  # (this host loads what the fleet loads: it fails there too, and the gate skips it)
                continue
            # --no-load-check: a version skipped because it did not load HERE (a token only the fleet's hosts have,
            # a GPU) was never recorded, and an older one that never answered was, the rollback target.
            print(
                printable(
                    f"warning: model {args.model!r} version {number} does not load here ({exc}); with --no-load-check "
                    "it is taken to load on the fleet's hosts and answer there (unless a newer version does), as the "
                    "version to roll back to"
                ),
                file=sys.stderr,
            )
            answering = (number, None)
            continue
        if answering is None or answering[1] is None or not incompatibilities(answering[1], found):
            answering = (number, found)
    return newest if answering is None else answering[0]


def _version_folders(folder: Path) -> list[str]:
    """The names of ``folder``'s version folders (a number holding a model.onnx or remote.toml), in order: a
    model's folder given where the repository goes, where the servers never read a control file."""
    try:
        found = [entry for entry in folder.iterdir() if is_version_name(entry.name) and entry.is_dir()]
        return [
            entry.name
            for entry in sorted(found, key=lambda entry: int(entry.name))
            if (entry / MODEL_FILENAME).is_file() or (entry / REMOTE_FILENAME).is_file()
        ]
    except OSError:  # (a folder it may not read: the write that follows says so)
        return []


_MODELS_NAMED = 20
"""How many of the repository's models a refusal of an unknown one lists."""


def _models_there(model: str, models: Iterable[str]) -> str:
    """``models: a, b; did you mean 'b'?``: the repository's models (the first ``_MODELS_NAMED``, their
    control characters as escapes) and the one ``model`` is a typo of, if any."""
    names = sorted(models)
    if not names:
        return "it holds no model"
    shown = ", ".join(printable(name) for name in names[:_MODELS_NAMED])
    more = f", ... ({len(names)} in all)" if len(names) > _MODELS_NAMED else ""
    meant = close_match(model, names, cutoff=TYPO_CUTOFF)
    guess = "" if meant is None else f"; did you mean {printable(repr(meant))}?"
    return f"models: {shown}{more}{guess}"


def _link_hint(args: argparse.Namespace, problems: list[str]) -> str:
    """With --no-follow-symlinks, why a linked model or version was not seen."""
    if args.follow_symlinks or not any("symbolic link" in problem for problem in problems):
        return ""
    return "; the repository has symbolic links, which --no-follow-symlinks skips"


def _configured_default(source: ModelSource) -> int | None:
    """The version a server answers with by default when the control file names no stable version (what
    the first switch records as the one to roll back to): ``config.toml``'s ``rollout.stable``, else the
    highest version its version policy selects. The CLI sees neither a server's ``models=`` configuration
    nor its compatibility gate; ``None`` when ``config.toml`` cannot be read."""
    try:
        config = ModelConfig() if source.config_path is None else load_model_config(source.config_path, ignored=[])
    except ConfigurationError:
        return None
    stable = config.rollout.stable
    if stable is not None and stable in source.versions:
        return stable
    return max(config.version_policy.select(list(source.versions)), default=None)


def _command(
    commands: Subparsers, name: str, summary: str, examples: str, *, model: bool = True
) -> argparse.ArgumentParser:
    parser = add_command(commands, name, summary=summary, examples=examples)
    parser.add_argument("repository", help="the model repository every server of the fleet reads")
    if model:
        parser.add_argument("model", help="the model name")
    parser.add_argument("--actor", help="who makes the change, recorded in the control file")
    parser.add_argument(
        "--follow-symlinks",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="count linked model and version folders when checking that MODEL and VERSION exist, as a fleet "
        "of Server(..., follow_symlinks=True) serves them (default); "
        "--no-follow-symlinks counts only real folders, as a server without follow_symlinks does",
    )
    parser.set_defaults(run=_control)
    return parser


def _load_check_option(parser: argparse.ArgumentParser, version: str = "VERSION") -> None:
    parser.add_argument(
        "--no-load-check",
        dest="load_check",
        action="store_false",
        help=f"write the change without loading {version} first (by default a version that does not load here, "
        "as validate loads it, is refused)",
    )


def add_switch(commands: Subparsers) -> None:
    parser = _command(
        commands,
        "switch",
        "make VERSION the stable version on every worker and host",
        "  python -m inprocserve switch models/ fraud 3\n"
        "  python -m inprocserve switch --actor alice models/ fraud 3\n\n"
        "VERSION is loaded first, as validate loads it: one that does not load here is refused (exit status 1,\n"
        "nothing written); --no-load-check writes the change without loading it (a first switch of a model still\n"
        "loads its versions, as far as this host can, to find the one serving now: the one to roll back to. No\n"
        "file records it: each worker's compatibility gate chose it by comparing the versions' inputs and\n"
        "outputs, as onnxruntime or a remote server reports them, which only loading reads; a stable version\n"
        "named in config.toml or the control file is taken as it is, unloaded). A\n"
        "VERSION whose inputs or outputs would break the callers of the version serving now is refused too;\n"
        "--force switches anyway.\n",
    )
    parser.add_argument("version", type=int, help="the version that becomes stable")
    _load_check_option(parser)
    parser.add_argument(
        "--force",
        action="store_true",
        help="switch even to a version whose inputs or outputs would break the callers of the version serving "
        "now (refused by default, as Server.switch refuses it without force=True)",
    )


def add_rollback(commands: Subparsers) -> None:
    parser = _command(
        commands,
        "rollback",
        "go back to the stable version before the last switch",
        "  python -m inprocserve rollback models/ fraud\n\n"
        "The version to go back to is loaded first, as validate loads it: one that does not load here is\n"
        "refused (exit status 1, nothing written); --no-load-check writes the change without loading it.\n",
    )
    _load_check_option(parser, "the version to go back to")


_CONFIG = "config"
"""``canary MODEL config``: the canary is the model's configured one again (see :func:`_canary_cleared`)."""


def _canary_cleared(state: ModelControl, version: str | None) -> ModelControl:
    """``state`` without a canary of the control file's: stopped, the configured canary's too (``none``:
    ``canary_off``, see :attr:`ModelControl.canary_off`; with no version recorded, whatever a stop had: the CLI
    cannot know the servers' configured canary, see :attr:`ModelControl.canary_off_version`), or handed back to
    the configuration (``config``)."""
    return replace(
        state, canary_version=None, canary_percent=0.0, canary_off=version != _CONFIG, canary_off_version=None
    )


def _canary_version(text: str) -> int | str | None:
    """An argparse ``type``: a version number, ``none`` or ``config`` (argparse's own refusal named this
    function: "invalid _canary_version value")."""
    if text == "none":
        return None
    if text == _CONFIG:
        return _CONFIG
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a version: give a whole number >= 1, or 'none' to stop the canary ('config' hands it "
            "back to the model's configuration)"
        ) from None


def _canary_percent(text: str) -> float:
    """An argparse ``type``: a number, with or without a trailing ``%`` (``10%`` is how a share is written;
    argparse said "invalid float value: '10%'"). Its range, 0 to 100, is checked with the change (exit 1)."""
    number = text.strip().removesuffix("%").rstrip()
    try:
        return float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a percentage: give a number from 0 to 100, such as 10 (or 10%)"
        ) from None


def add_canary(commands: Subparsers) -> None:
    parser = _command(
        commands,
        "canary",
        "send PERCENT percent of users to VERSION, sticky per user ('none' stops the canary)",
        "  python -m inprocserve canary models/ fraud 4 10\n  python -m inprocserve canary models/ fraud none\n"
        "  python -m inprocserve canary models/ fraud config\n\n"
        "While set, the canary replaces the model's configured rollout strategy. 'none' stops the canary: a\n"
        "configured one (config.toml's [rollout.canary]) sends no one to its version either; 'config' hands\n"
        "the canary back to the configuration (A/B, bandits and shadows: `kill`). PERCENT is required with a\n"
        "VERSION. VERSION is loaded first, as validate loads it: one that does not load here is refused (exit\n"
        "status 1, nothing written); --no-load-check writes the change without loading it. At PERCENT 0 it is\n"
        "not loaded: no one is sent to it (`canary models/ fraud 4 0` turns down a canary found broken).\n",
    )
    parser.add_argument("version", type=_canary_version, help="the canary version, 'none' or 'config'")
    parser.add_argument(
        "percent", type=_canary_percent, nargs="?", default=None, help="share of users, 0 to 100 (10 or 10%%)"
    )
    _load_check_option(parser)


def add_kill(commands: Subparsers) -> None:
    _command(
        commands,
        "kill",
        "kill switch: the stable version answers every request",
        "  python -m inprocserve kill models/ fraud\n",
    )


def add_resume(commands: Subparsers) -> None:
    _command(commands, "resume", "turn the kill switch off", "  python -m inprocserve resume models/ fraud\n")


def add_reload(commands: Subparsers) -> None:
    _command(
        commands,
        "reload",
        "make every server re-scan the repository",
        "  python -m inprocserve reload models/\n",
        model=False,
    )


CONTROL_COMMANDS = (add_switch, add_rollback, add_canary, add_kill, add_resume, add_reload)
"""The fleet-wide rollout subcommands, in the order ``--help`` lists them."""
