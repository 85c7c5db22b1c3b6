"""Commands on model files: ``inspect`` one model, ``validate`` a repository, ``quantize`` a model."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from ._cli_common import (
    CANNOT_RUN,
    OK,
    PROBLEMS,
    Subparsers,
    Terminated,
    add_command,
    fail,
    interrupted_by,
    positive_float,
    positive_int,
    positive_number,
    printable,
    raise_if_stopped,
    unwind_on_sigterm,
)
from ._config import ModelConfig, PoolConfig, WarmupConfig, load_model_config
from ._control import CONTROL_FILENAME, ControlFile, describe_unknown_keys
from ._errors import ConfigurationError, InprocserveError
from ._model import ModelVersion
from ._remote import RemoteBackend
from ._remote_model import read_remote_toml, unknown_keys_warning
from ._repository import MODEL_FILENAME, REMOTE_FILENAME, is_remote, is_version_name, link_advice_as, scan_repository
from ._signature import ANY_RANK, Signature

__all__ = ["add_inspect", "add_quantize", "add_validate", "check_version", "validate_repository"]


def _noop_deliver(request: object) -> None:  # the CLI never submits requests
    pass


def _say(line: str) -> None:
    """Print one line of a human-readable report with its control characters as escapes: the names in it
    come from a model file, a ``config.toml`` or a remote server, and printed as they came, an input named
    ``"x\\x1b]0;...\\nOK      fraud v9 (served)"`` retitled the terminal and forged a line of the report."""
    print(printable(line))


def _load(name: str, version: int, path: Path, config: ModelConfig, *, follow_symlinks: bool = False) -> ModelVersion:
    model = ModelVersion(name, version, path, config, deliver=_noop_deliver, follow_symlinks=follow_symlinks)
    model.load()
    return model


def _quiet(config: ModelConfig) -> ModelConfig:
    """``config`` with one small session: a check that a version loads, not of how fast it serves. The rest of
    its pool settings are kept (graph optimization, provider options, memory arena...): a version that loads
    only with them was refused, and one that fails only with them passed. Not ``require_gpu`` (the check
    runs where the fleet's GPU may not be: the providers fall back as they would), nor the optimized model's
    cache (a file written beside the model) or shared weights (a process-wide store)."""
    pool = dataclasses.replace(
        config.pool,
        size=1,
        intra_op_threads=1,
        inter_op_threads=1,
        require_gpu=False,
        optimized_model_cache=False,
        shared_weights=False,
    )
    return dataclasses.replace(config, pool=pool)


def check_version(
    name: str, version: int, path: Path, config: ModelConfig, *, follow_symlinks: bool = False
) -> Signature:
    """Load one version as ``validate`` does (warm-up included, with ``config``), or ask a remote version's
    server for it, and let it go; its signature.

    Raises:
        ModelLoadError: it does not load (its file is missing, unreadable or not a model; its warm-up fails),
            or its ``remote.toml`` is invalid or its server cannot be reached or has no such model.
    """
    if is_remote(path):
        signature = _remote_signature(name, version, path, [])[0]
    else:
        model = _load(name, version, path, _quiet(config), follow_symlinks=follow_symlinks)
        assert model.signature is not None
        signature = model.signature
        model.retire()
    # A stop signal that came as onnxruntime loaded may have been lost (see raise_if_stopped): switch, canary
    # and rollback went on to write the control file, exit 0, after a SIGTERM.
    raise_if_stopped()
    return signature


def _remote_signature(name: str, version: int, path: Path, ignored: list[str]) -> tuple[Signature, str]:
    """A remote version's signature, read from its server's metadata, and its endpoint. The keys of its
    ``remote.toml`` that this release does not know are appended to ``ignored`` (and left out, as a server does).

    Raises:
        ModelLoadError: the ``remote.toml`` is invalid, or the server cannot be reached or has no such model.
    """
    backend = RemoteBackend(name, version, read_remote_toml(path, ignored=ignored))
    try:
        return backend.prepare(), backend.remote.endpoint
    finally:
        backend.close()


# -- inspect -------------------------------------------------------------------------------------------


def add_inspect(commands: Subparsers) -> None:
    parser = add_command(
        commands,
        "inspect",
        summary="print a model's inputs and outputs",
        examples="  python -m inprocserve inspect models/fraud/2/model.onnx\n"
        "  python -m inprocserve inspect --json models/fraud/2\n\n"
        "Exit status 1 when the model cannot be loaded (or its server asked), 2 when MODEL does not exist.\n"
        "Control characters in names and messages are printed as escapes (\\x1b, \\n); --json keeps them.\n",
    )
    parser.add_argument(
        "model", help="a model.onnx file, a remote.toml (asks its server), or a version folder holding one"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=_inspect)


def _version_folder_hint(folder: Path) -> str:
    """For ``inspect`` given a model folder or a repository (one or two levels above a version's file): the
    version folder to give instead, the highest of the first model (it said only "no such model file")."""
    try:
        if not folder.is_dir():
            return ""
        for model_folder in [folder, *sorted(entry for entry in folder.iterdir() if entry.is_dir())]:
            versions = [entry for entry in model_folder.iterdir() if _holds_a_version(entry)]
            if versions:
                what = "a model folder" if model_folder == folder else f"a repository ({model_folder}: a model folder)"
                latest = max(versions, key=lambda entry: int(entry.name))
                return f"; {folder} is {what}: give one of its version folders, such as {latest}"
    except OSError:  # (a folder it may not read: the message stands without the hint)
        return ""
    return ""


def _holds_a_version(entry: Path) -> bool:
    return is_version_name(entry.name) and (entry / MODEL_FILENAME).is_file()


def _in_a_version_folder(path: Path) -> bool:
    """Whether ``path`` is a repository's model file in its version folder (``models/fraud/7/model.onnx``): a
    file of another name in a numbered folder (``releases/3/fraud-v3.onnx``) is a loose file."""
    return is_version_name(path.parent.name) and path.name in (MODEL_FILENAME, REMOTE_FILENAME)


def _model_name(path: Path) -> str:
    """The model ``inspect`` names for ``path``: its model folder's in a repository (``fraud`` for
    ``models/fraud/7/model.onnx``), else the file's own (a loose ``downloads/fraud-v3.onnx`` was named after
    the folder two levels up); ``model`` when neither says more."""
    if _in_a_version_folder(path):
        return path.parent.parent.name or "model"
    if path.stem in ("model", "remote"):
        return path.parent.name or "model"
    return path.stem or "model"


def _inspect(args: argparse.Namespace) -> int:
    path = Path(args.model)
    if path.is_dir():
        path = path / (REMOTE_FILENAME if (path / REMOTE_FILENAME).is_file() else MODEL_FILENAME)
    if not path.is_file():
        return fail(
            f"{args.model}: no such model file (give a {MODEL_FILENAME}, a {REMOTE_FILENAME} or a version folder "
            f"holding one){_version_folder_hint(Path(args.model))}",
            CANNOT_RUN,
        )
    if is_remote(path):
        return _inspect_remote(path, as_json=args.json)
    config = ModelConfig(pool=PoolConfig(size=1, intra_op_threads=1), warmup=WarmupConfig(enabled=False))
    # (a version folder's number names the version: a broken models/fraud/7/model.onnx was "version 1")
    folder = path.parent.name
    version = int(folder) if _in_a_version_folder(path) and int(folder) >= 1 else 1
    try:
        model = _load(_model_name(path), version, path, config)
    except InprocserveError as exc:
        raise_if_stopped()  # (a stop that came as onnxruntime loaded: see raise_if_stopped)
        return fail(printable(str(exc)), PROBLEMS)
    try:
        raise_if_stopped()  # (it printed the model's inputs and outputs, exit 0)
        assert model.signature is not None
        info = {"path": str(path), "bytes": path.stat().st_size, "providers": model.providers}
        info.update(model.signature.to_dict())
        why = model.why_unbatchable()
        info.update(batchable=why is None, unbatchable_reason=why)  # (the load's verdict, not the shapes' alone)
        if args.json:
            print(json.dumps(info, indent=2))
            return OK
        _say(f"{path} ({info['bytes']:,} bytes)")
        _say("inputs:")
        for spec in model.signature.inputs:
            _say(f"  {spec.describe()}")
        _say("outputs:")
        for spec in model.signature.outputs:
            _say(f"  {spec.describe()}")
        batch = "yes (dynamic axis 0 on every input and output)" if why is None else f"no (runs unbatched: {why})"
        _say(f"batchable: {batch}")
        return OK
    finally:
        model.retire()


def _inspect_remote(path: Path, *, as_json: bool) -> int:
    ignored: list[str] = []
    try:
        signature, endpoint = _remote_signature(_model_name(path), 1, path, ignored)
    except InprocserveError as exc:
        return fail(printable(str(exc)), PROBLEMS)
    if ignored:  # (on stderr: --json's output stays one document)
        print(f"warning: {printable(unknown_keys_warning(path, ignored))}", file=sys.stderr)
    if as_json:
        print(json.dumps({"path": str(path), "remote": endpoint, **signature.to_dict()}, indent=2))
        return OK
    _say(f"{path} (served by {endpoint})")
    for title, specs in (("inputs", signature.inputs), ("outputs", signature.outputs)):
        _say(f"{title}:")
        for spec in specs:
            _say(f"  {spec.describe()}")
    _say(f"batchable: {'yes' if signature.batchable else f'no ({signature.unbatchable_reason})'}")
    return OK


# -- validate ------------------------------------------------------------------------------------------


def add_validate(commands: Subparsers) -> None:
    parser = add_command(
        commands,
        "validate",
        summary="load every model of a repository, as the server would, and report problems",
        examples="  python -m inprocserve validate models/\n"
        "  python -m inprocserve validate --json models/ | jq '.problems'\n\n"
        "Each version is loaded and warmed up with its config.toml (warm-up inputs file, drift reference\n"
        "file included). Exit status 1 when anything would fail to load or be skipped by the server, 2 when\n"
        "REPOSITORY is not a folder. Symbolic links are reported as problems, as a Server reports them;\n"
        "--follow-symlinks validates the linked folders and files, as Server(..., follow_symlinks=True) serves them.\n"
        "Control characters in names and messages are printed as escapes (\\x1b, \\n); --json keeps them.\n",
    )
    parser.add_argument("repository", help="a folder laid out as <model>/<version>/model.onnx")
    parser.add_argument("--json", action="store_true", help="print one JSON report instead of lines")
    parser.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="load linked model folders, version folders and files, like Server(..., follow_symlinks=True)",
    )
    parser.set_defaults(run=_validate)


_FOLLOW_HINT = "pass --follow-symlinks"
"""What ``validate`` advises for a symbolic link it refuses (a Server's user is told of follow_symlinks=True)."""


def validate_repository(repository: Path, *, follow_symlinks: bool = False) -> dict[str, Any]:
    """Load every version of every model in ``repository`` once; return a JSON-ready report.

    The report: ``repository``; ``ok`` (no problem at all); ``problems`` (every message, in order);
    ``layout_problems`` (files and folders the server would skip, also in ``problems``); ``control_problems``
    (the fleet's control file cannot be read, or serves a version not in the repository; also in
    ``problems``); ``control_warnings`` (keys of the control file this release ignores: a newer release's
    during a rolling upgrade, which is no problem, or a typo; not in ``problems``); ``models``: name ->
    ``config_error``, ``config_warning`` (keys of its ``config.toml`` or a ``remote.toml`` this release ignores,
    and settings that load but do nothing, such as ``[drift] ks_threshold = 1``; also in ``problems``),
    ``policy_error``
    (its version policy selects none of its versions, or its rollout names a version that is not there) and
    ``versions``: number -> ``ok``,
    ``served`` (a server started now serves it: the version policy over the versions that load, or the
    rollout or control file names it), ``error`` and ``signature`` (and ``remote``, the endpoint, for a
    version served remotely: its server is asked).
    ``follow_symlinks`` scans as ``Server(repository, follow_symlinks=True)`` does: links are loaded, not
    reported.

    Raises:
        ConfigurationError: ``repository`` is not a directory.
    """
    scan = scan_repository(repository, follow_symlinks=follow_symlinks)
    control_problems: list[str] = []
    control_warnings: list[str] = []
    # The fleet's control file: a server that starts while it cannot be read refuses every request, and one
    # whose revision serves a version that is not here serves another (both reported as control.error).
    control_served: dict[str, set[int]] = {}
    control_kept: dict[str, set[int]] = {}  # and those it keeps loaded (its previous stable, for a rollback)
    try:
        control = ControlFile(repository).read()
    except ConfigurationError as exc:
        where = "" if CONTROL_FILENAME in str(exc) else f"{repository / CONTROL_FILENAME}: "  # (name the file)
        control_problems.append(f"{where}{exc}; a server started now refuses every request until it is fixed")
    else:
        if control.unknown_keys:  # (not a problem: a newer release's keys must not fail an older host's check)
            control_warnings.append(
                f"{CONTROL_FILENAME} (revision {control.revision}) has keys this release does not know: "
                f"{describe_unknown_keys(control.unknown_keys)}; servers of this release ignore them (a newer "
                "release's? if not, a typo)"
            )
        for name, state in sorted(control.models.items()):
            source = scan.models.get(name)
            served = {v for v in (state.stable, state.canary_version if state.canary_active else None) if v}
            control_served[name] = served
            control_kept[name] = state.versions
            missing = sorted(v for v in served if source is None or v not in source.versions)
            if source is not None and missing:
                control_problems.append(
                    f"{name}: {CONTROL_FILENAME} (revision {control.revision}) serves version(s) "
                    f"{', '.join(map(str, missing))}, not in the repository: a server started now serves another"
                )
    layout_problems = [link_advice_as(problem, _FOLLOW_HINT) for problem in scan.problems]
    problems = [*layout_problems, *control_problems]
    models: dict[str, Any] = {}
    for name, source in scan.models.items():
        entry: dict[str, Any] = {"config_error": None, "config_warning": None, "policy_error": None, "versions": {}}
        models[name] = entry
        ignored: list[str] = []
        try:
            config = load_model_config(source.config_path, ignored=ignored) if source.config_path else ModelConfig()
        except InprocserveError as exc:
            entry["config_error"] = str(exc)
            problems.append(f"{name}: {exc}")
            continue
        warnings = config.drift.warnings()  # (settings a server loads but that do nothing: a problem too)
        if ignored:  # (a problem: a server of this release serves the model, without them; a typo, most often)
            warnings.insert(
                0,
                f"{source.config_path}: this release does not know {', '.join(ignored)}; a server of this release "
                "serves the model without them (a typo? or written for a newer release)",
            )
        if warnings:
            entry["config_warning"] = "; ".join(warnings)
            problems.append(f"{name}: {entry['config_warning']}")
        selected = set(config.version_policy.select(list(source.versions))) | control_served.get(name, set())
        if source.versions and not selected and not config.rollout.referenced_versions & set(source.versions):
            entry["policy_error"] = (  # (a typo such as { specific = [12] }: a server serves the model nothing)
                f"its version_policy selects none of the versions in the repository "
                f"({', '.join(map(str, sorted(source.versions)))}); a server serves the model nothing"
            )
            problems.append(f"{name}: {entry['policy_error']}")
        absent = sorted(config.rollout.referenced_versions - set(source.versions))
        if absent:  # (a typo such as stable = 33 for 3: a server serves the latest version instead)
            absence = (
                f"its rollout names version(s) {', '.join(map(str, absent))}, not in the repository: requests "
                "meant for them get another"
            )
            entry["policy_error"] = "; ".join(filter(None, (entry["policy_error"], absence)))
            problems.append(f"{name}: {absence}")
        quiet = _quiet(config)  # (one small session per version)
        for version, path in sorted(source.versions.items()):
            result: dict[str, Any] = {"ok": False, "served": False, "error": None, "signature": None}
            entry["versions"][str(version)] = result
            if is_remote(path):  # reached, not loaded: its signature comes from the server's metadata
                unknown: list[str] = []
                try:
                    signature, endpoint = _remote_signature(name, version, path, unknown)
                except InprocserveError as exc:
                    result["error"] = str(exc)
                    problems.append(f"{name} v{version}: {exc}")
                    continue
                finally:  # (a problem, as config.toml's: a server serves the version without them)
                    if unknown:
                        warning = unknown_keys_warning(path, unknown)
                        entry["config_warning"] = "; ".join(filter(None, (entry["config_warning"], warning)))
                        problems.append(f"{name} v{version}: {warning}")
                result.update(ok=True, signature=signature.to_dict(), remote=endpoint)
                continue
            try:
                model = _load(name, version, path, quiet, follow_symlinks=follow_symlinks)
            except InprocserveError as exc:
                raise_if_stopped()  # (a stop that came as onnxruntime loaded: see raise_if_stopped)
                result["error"] = link_advice_as(str(exc), _FOLLOW_HINT)
                problems.append(f"{name} v{version}: {result['error']}")  # (the same advice as the version's)
                continue
            assert model.signature is not None
            result.update(ok=True, signature=model.signature.to_dict())
            model.retire()
            raise_if_stopped()  # (validate went on with the next version, and printed its report)
        # What a server started now serves, as it chooses: the policy applied to the versions that load (a
        # failed latest leaves the one before it serving), and the versions its rollout or the control file
        # names (a stable pin, a canary, a shadow; the control file's previous stable, loaded for a rollback),
        # whatever the policy. (Said of every version on disk by
        # the policy alone, the demo's stable version 1 and canary 2 read "not served", its shadow "served".)
        usable = sorted(int(number) for number, result in entry["versions"].items() if result["ok"])
        named = config.rollout.referenced_versions | control_kept.get(name, set())
        served = set(config.version_policy.select(usable)) | (named & set(usable))
        for number in served:
            entry["versions"][str(number)]["served"] = True
    return {
        "repository": str(repository),
        "ok": not problems,
        "problems": problems,
        "layout_problems": layout_problems,
        "control_problems": control_problems,
        "control_warnings": control_warnings,
        "models": models,
    }


def _validate(args: argparse.Namespace) -> int:
    try:
        report = validate_repository(Path(args.repository), follow_symlinks=args.follow_symlinks)
    except InprocserveError as exc:
        if args.json:
            problems = [str(exc)]
            print(json.dumps({"repository": args.repository, "ok": False, "problems": problems, "models": {}}))
        return fail(printable(str(exc)), CANNOT_RUN)
    if args.json:
        print(json.dumps(report, indent=2))
        return OK if report["ok"] else PROBLEMS
    for problem in [*report["layout_problems"], *report["control_problems"]]:
        _say(f"PROBLEM {problem}")
    for warning in report["control_warnings"]:
        _say(f"WARNING {warning}")
    for name, entry in report["models"].items():
        if entry["config_error"]:
            _say(f"FAIL    {name}: {entry['config_error']}")
        if entry["config_warning"]:
            _say(f"PROBLEM {name}: {entry['config_warning']}")
        if entry["policy_error"]:
            _say(f"PROBLEM {name}: {entry['policy_error']}")
        for version, result in entry["versions"].items():
            if not result["ok"]:
                _say(f"FAIL    {name} v{version}: {result['error']}")
                continue
            served = "served" if result["served"] else "not served by the version policy"
            inputs = ", ".join(_describe(spec) for spec in result["signature"]["inputs"])
            _say(f"OK      {name} v{version} ({served}): {inputs}")
    print(f"{len(report['models'])} model(s), {len(report['problems'])} problem(s)")
    return OK if report["ok"] else PROBLEMS


def _describe(spec: dict[str, Any]) -> str:  # TensorSpec.describe(), from the JSON form
    dims = spec["shape"]
    shape = ANY_RANK if dims is None else ", ".join("?" if axis is None else str(axis) for axis in dims)
    return f"{spec['name']}: {spec['type']} [{shape}]"


# -- quantize ------------------------------------------------------------------------------------------


def add_quantize(commands: Subparsers) -> None:
    parser = add_command(
        commands,
        "quantize",
        summary="dynamic INT8 quantization, with a size/speed/accuracy report",
        examples="  python -m inprocserve quantize models/fraud/2/model.onnx fraud-int8.onnx\n"
        "  python -m inprocserve quantize --sample 1024 --json model.onnx model-int8.onnx\n"
        "  python -m inprocserve quantize --max-abs-diff 0.05 model.onnx model-int8.onnx\n\n"
        "TARGET is written to a temporary file beside it and renamed into place once the quantized model\n"
        "has loaded, so a failure leaves it as it was; it must be neither SOURCE itself nor a folder, and\n"
        "its folder must exist. Ship it as a new version like any release: into a new version folder made\n"
        'outside the repository, then moved in whole (docs/repository.md, "Hot reload").\n'
        "TARGET is not written either when a value is NaN or infinite in one model only (--allow-not-finite\n"
        "writes it anyway) or, with --max-abs-diff D, when a float output is further off than D: the report is\n"
        "printed, then why (exit status 1).\n"
        "Exit status 1 when the model cannot be quantized, 2 when it could not run (a usage error, a missing\n"
        "SOURCE or target folder, onnx not installed); 130, 143 or 129 when stopped by SIGINT (Ctrl-C), SIGTERM\n"
        "or SIGHUP (TARGET untouched, no temporary file left).\n\n"
        "Needs onnx: pip install 'inprocserve[quantize]'\n",
    )
    parser.add_argument("source", help="the model.onnx to quantize")
    parser.add_argument("target", help="where to write the quantized model (.onnx)")
    parser.add_argument(
        "--sample", type=positive_int, default=256, help="rows of random inputs to compare answers on (>= 1)"
    )
    parser.add_argument(
        "--seconds", type=positive_float, default=1.0, help="seconds per speed measurement (> 0, default 1)"
    )
    parser.add_argument(
        "--max-abs-diff",
        type=positive_number("one", "0.05"),
        metavar="D",
        help="refuse (exit 1, TARGET not written) when a float output differs from the original's by more than D",
    )
    parser.add_argument(
        "--allow-not-finite",
        action="store_true",
        help="write TARGET even where a value is NaN or infinite in one model only (refused by default)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=_quantize)


def _stopped(interruption: BaseException, target: str) -> int:
    """Stopped from outside: one line, and the exit status a shell reports for a command ended by the signal."""
    stop = interruption.signum if isinstance(interruption, Terminated) else signal.SIGINT
    with contextlib.suppress(OSError):  # (a hangup closed the terminal: the line has nowhere to go)
        print(
            f"error: stopped by {stop.name} before the quantized model was written; {target} was not written",
            file=sys.stderr,
        )
    return 128 + stop.value


def _quantize(args: argparse.Namespace) -> int:
    from ._quantize import AccuracyRefusedError, quantize

    source = Path(args.source)
    if not source.is_file():
        return fail(f"{args.source}: no such model file", CANNOT_RUN)
    # The quantizer logs generic advice on the root logger: quiet it while it runs, then restore the level
    # (main() may run inside another program).
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        # SIGTERM (`timeout`, docker stop, a cancelled CI job) killed the command on the spot, leaving its hidden
        # temporary file (a whole model) beside TARGET; now it unwinds as Ctrl-C does, and quantize removes it.
        with unwind_on_sigterm():
            report = quantize(
                source,
                Path(args.target),
                sample_rows=args.sample,
                seconds=args.seconds,
                max_abs_diff=args.max_abs_diff,
                allow_not_finite=args.allow_not_finite,
            )
    except (KeyboardInterrupt, Terminated) as exc:
        return _stopped(exc, args.target)
    except ImportError as exc:  # the message names the extra to install
        if (interruption := interrupted_by(exc)) is not None:  # (a signal as onnx or onnxruntime was imported)
            return _stopped(interruption, args.target)
        return fail(str(exc), CANNOT_RUN)
    except AccuracyRefusedError as exc:  # (the report shows what was refused; the error line says so)
        _print_quantize_report(exc.report, as_json=args.json)
        return fail(str(exc), PROBLEMS)
    except InprocserveError as exc:  # before ValueError: a ConfigurationError is both
        if (interruption := interrupted_by(exc)) is not None:  # (a signal raised inside onnxruntime's run)
            return _stopped(interruption, args.target)
        return fail(str(exc), PROBLEMS)
    except (ValueError, OSError) as exc:  # the target is the source, its folder is missing or not writable
        return fail(str(exc), CANNOT_RUN)
    except MemoryError as exc:  # (numpy's "Unable to allocate 2.91 TiB ..." was a traceback: a zero too many)
        return fail(f"--sample {args.sample}: {exc or 'out of memory'}; give fewer rows", CANNOT_RUN)
    finally:
        root.setLevel(level)
    _print_quantize_report(report, as_json=args.json)
    return OK


def _print_quantize_report(report: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['source']} -> {report['target']}{'' if report['written'] else ' (not written)'}")
    print(f"size: {report['bytes_before']:,} -> {report['bytes_after']:,} bytes ({report['size_ratio']:.2f}x)")
    for op_type, reason in report["left_in_float32"].items():
        print(f"not quantized: {op_type} ({reason})")
    shapes = ", ".join(f"{name} {shape}" for name, shape in report["sample_shapes"].items())
    print(f"compared on made-up inputs (random floats, zeros elsewhere): {shapes}")
    for batch, figures in report["speed"].items():
        print(
            f"speed, {batch.replace('_', ' ')}: {figures['before_rows_per_s']:,.0f} -> "
            f"{figures['after_rows_per_s']:,.0f} rows/s ({figures['ratio']:.2f}x)"
        )
    for output, figures in report["accuracy"].items():
        if "max_abs_diff" not in figures:  # labels: the share that are the same
            print(f"accuracy on {report['sample_rows']} random rows, {output}: agreement {figures['agreement']:.1%}")
            continue
        agreement = figures.get("label_agreement")
        extra = f", label agreement {agreement:.1%}" if agreement is not None else ""
        if figures.get("not_finite_in_one_only"):
            extra += f", {figures['not_finite_in_one_only']} value(s) NaN or infinite in one model only"
        diff = figures["max_abs_diff"]
        print(f"accuracy on {report['sample_rows']} random rows, {output}: max abs diff {diff:.4g}{extra}")
