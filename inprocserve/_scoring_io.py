"""``python -m inprocserve score MODEL INPUT OUTPUT``: read rows from a file, score them with
:meth:`Server.predict_many`, write the answers to a file.

Formats, by file extension: ``.npy`` (one array: the input of a one-input model), ``.npz`` (one array per
input name; answers: one array per output name), ``.csv`` (columns form the float matrix of a one-input model;
a header row is optional and detected; answers: columns ``<output>_<i>``) and ``.parquet`` (like CSV; needs
``pyarrow``). Inputs are read chunk by chunk (``.npy`` memory-mapped, ``.npz`` from its zip streams, CSV and
Parquet streamed); answers are written to a temporary file beside OUTPUT (beside the file it links to, if it
is a symbolic link) that is fsynced and replaces it (its folder then fsynced) only when every row succeeded.
An input with no rows gives an empty output of the same form (zero rows, the outputs' dtypes/columns).

Reading the files is :mod:`._scoring_readers`, writing them :mod:`._scoring_writer`; this module runs the command.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._cli_common import Terminated, interrupted_by, raise_if_stopped, unwind_on_sigterm
from ._errors import InprocserveError, InvalidInputError, ModelNotFoundError
from ._repository import MODEL_FILENAME
from ._scoring_formats import FORMATS, file_format
from ._scoring_inputs import rows_of
from ._scoring_plan import BESIDE_VALUES_HINT, SCORING_RUN_ROWS, not_a_multiple, plan_for_version
from ._scoring_progress import ProgressBar
from ._scoring_readers import read_inputs
from ._scoring_writer import AnswerWriter
from ._server import Server
from ._signature import Signature

__all__ = ["FORMATS", "run_score", "score_file"]

_MODEL_NAME = "model"  # the name a model loaded from a file is served under


def _check_paths(inputs: Path, output: Path) -> None:
    """Both files' formats are known, OUTPUT is not a folder, and OUTPUT is not INPUT.

    Raises:
        InvalidInputError: OUTPUT is a folder (every row was scored before the rename onto it failed, naming
            the hidden temporary file), an unknown extension, or OUTPUT naming the INPUT file (``score m
            rows.csv rows.csv``, a slip of tab completion, replaced the rows with their answers and exited 0).
    """
    if output.is_dir():
        example = output / f"answers{inputs.suffix.lower() if inputs.suffix.lower() in FORMATS else '.npy'}"
        raise InvalidInputError(f"output {output} is a folder; name a file to write the answers to, e.g. {example}")
    file_format(inputs, "input")
    file_format(output, "output")
    with contextlib.suppress(OSError):  # (no OUTPUT yet: not the same file)
        if os.path.samefile(inputs, output):
            raise InvalidInputError(
                f"output {output} is the input file; write the answers to another file (the rows would be lost)"
            )


def _check_selection(model: Path, name: str | None, version: int | None) -> bool:
    """Whether ``model`` is one model's file (a .onnx file or a version folder holding one), whose ``name`` and
    ``version``, if given, must be what its place in a repository says (``<repository>/<name>/<version>/``).

    Raises:
        InvalidInputError: ``--name`` or ``--version`` contradicts the file's place, or is given for a file outside
            a repository (``--name fraud`` beside churn's version folder scored churn, exit 0: it was ignored).
    """
    file = model / MODEL_FILENAME if model.is_dir() else model
    if not file.is_file():
        return False
    folder = Path(os.path.abspath(file)).parent  # (named even as "." or "../3")
    placed = file.name == MODEL_FILENAME and folder.name.isdecimal()
    owner, number = folder.parent.name, int(folder.name) if placed else None
    for flag, given, fits in (("--name", name, name == owner), ("--version", version, version == number)):
        if given is not None and not (placed and fits):
            what = f"model {owner!r} version {number}" if placed else "a model file outside a repository"
            repository = folder.parent.parent if placed else "REPOSITORY"
            wanted = f"--name {name or owner}" + ("" if version is None else f" --version {version}")
            raise InvalidInputError(
                f"{flag} {given} does not fit MODEL {model}, which is {what}; drop {flag}, or give the repository "
                f"instead: {repository} {wanted}"
            )
    return True


def _open_model(server: Server, model: Path, name: str | None, version: int | None = None) -> str:
    """Load ``model`` (a .onnx file, a folder holding model.onnx, or a repository) into ``server``; from a
    repository, ``version`` is loaded whether or not the model's version policy serves it (a policy is about
    live traffic; an offline job may score any version on disk)."""
    file = model / MODEL_FILENAME if model.is_dir() else model
    if file.is_file():
        server.load(_MODEL_NAME, path=file)
        return _MODEL_NAME
    if not model.is_dir():
        raise ModelNotFoundError(f"model {model} does not exist (give a .onnx file, a version folder or a repository)")
    served = server.models
    if name is None:
        if not served:
            raise ModelNotFoundError(_nothing_served(model))
        if len(served) != 1:
            raise ModelNotFoundError(f"the repository {model} serves {sorted(served)}; pick one with --name")
        name = next(iter(served))
    if version is not None and version not in served.get(name, []):
        server.load(name, version=version)  # ModelNotFoundError if it is not on disk, ModelLoadError if broken
        return name
    if name not in served:
        raise server._not_found(name, None)  # names the servable models, and why this one failed to load
    return name


def _nothing_served(folder: Path) -> str:
    """Why a folder given as the model serves nothing, and what to give instead: a model folder (its version
    folders hold model.onnx) was taken for a repository, and told to pick a model with --name, which it has
    none of."""
    versions = [entry for entry in folder.iterdir() if entry.name.isdecimal() and (entry / MODEL_FILENAME).is_file()]
    if versions:
        latest = max(versions, key=lambda entry: int(entry.name))
        return (
            f"{folder} is a model folder, not a repository: give one of its version folders ({latest}), "
            f"or the repository with the model's name: {folder.parent} --name {folder.name}"
        )
    return f"the repository {folder} serves no models; python -m inprocserve validate {folder} says why"


def score_file(
    model: str | Path,
    inputs: str | Path,
    output: str | Path,
    *,
    name: str | None = None,
    version: int | None = None,
    batch_rows: int | None = None,
    progress: bool = True,
) -> int:
    """Score every row of ``inputs`` with ``model`` and write the answers to ``output``; returns the rows.

    Raises:
        InprocserveError: the model, the files or a row could not be scored (``output`` is left untouched).
    """
    model_path, input_path, output_path = Path(model), Path(inputs), Path(output)
    _check_paths(input_path, output_path)
    if _check_selection(model_path, name, version):
        name = version = None  # (what the file's place says: it is served as the one model of this run)
    is_repository = model_path.is_dir() and not (model_path / MODEL_FILENAME).is_file()
    with Server(model_path if is_repository else None) as server:  # a broken sibling model does not matter
        served = _open_model(server, model_path, name, version)
        signature, limit, window_rows = _loaded(server, served, version, batch_rows)
        raise_if_stopped()  # (a signal that came as onnxruntime loaded may have been lost: see raise_if_stopped)
        # an output with no first axis (a total), or a fixed one unlike the inputs' (which give the rows)
        firsts = {spec.shape[0] for spec in signature.inputs if spec.shape}
        unbatched = [
            spec.describe()
            for spec in signature.outputs
            if spec.shape is not None
            and not spec.is_maps_per_row  # a ZipMap's maps: one per row, written as a column per key
            and (not spec.shape or (not spec.has_dynamic_batch and spec.shape[0] not in firsts))
        ]
        if unbatched:  # its answers have no row per input row to write
            raise InvalidInputError(
                f"model {served!r} answers {', '.join(unbatched)}, without a batch axis: the score command writes "
                "one output row per input row; call server.predict_many (or predict) from Python for such a model"
            )
        isatty = getattr(sys.stderr, "isatty", None)
        bar = ProgressBar(sys.stderr) if progress and isatty is not None and isatty() else None
        exact = signature.fixed_rows
        source, total = read_inputs(input_path, signature, limit, count_rows=bar is not None or exact is not None)
        if exact is not None and total is not None and total % exact:
            # (a CSV or Parquet file is read in blocks: its last one was refused after the others ran)
            raise not_a_multiple(f"model {served!r}", exact, total, "file")

        def report(done_rows: int, _total_rows: int | None) -> None:
            assert bar is not None
            bar(done_rows, total)  # the file's own row count: CSV and Parquet are read as streams of batches

        in_flight = _requests_in_flight(source, limit, window_rows)
        writer: AnswerWriter | None = None
        rows = 0
        counted = _RowsRead(source)
        try:  # (the writer is made inside: a stop as it returns must still remove its file)
            writer = AnswerWriter(output_path, signature)
            for answer in server.predict_many(
                served,
                counted.source,
                version=version,
                batch_rows=batch_rows,
                max_in_flight=in_flight,
                progress=report if bar else None,
            ):
                rows += _answered_rows(answer, served, server, version)
                with _writing_to(output_path):
                    writer.write(answer)
                raise_if_stopped()
            raise_if_stopped()  # never commit OUTPUT for a run that was stopped
            if rows != counted.rows:
                raise _not_row_per_row(served, server, version, f"{rows} rows answered for {counted.rows} input rows")
            with _writing_to(output_path):
                writer.commit()
        except BaseException:
            if writer is not None:
                writer.discard()
            raise
        finally:
            if bar is not None:
                bar.close()
    return rows


# The most bytes of input rows a run keeps in flight (read, queued and running), where its rows are wide: the
# window predict_many keeps is counted in rows (two requests of them per session), and 512 rows of 64 MiB, a
# .npz of zeros of 32 MB, were 32 GiB read ahead. A request of one chunk is always let through.
_WINDOW_BYTES = 64 << 20


def _requests_in_flight(source: Any, request_rows: int, window_rows: int) -> int | None:
    """The ``max_in_flight`` for predict_many that keeps the input rows in flight within :data:`_WINDOW_BYTES`
    where its own window (``window_rows``) would hold more, else ``None``. Only a .npy's and a .npz's rows may
    be wide: a CSV or Parquet line is bounded as it is read."""
    if isinstance(source, np.ndarray):  # (a .npy, memory-mapped: predict_many cuts it into requests)
        row_bytes = source.itemsize * math.prod(source.shape[1:]) if source.ndim else 0
    else:  # (a .npz: its batches are cut to CHUNK_BYTES already, and each is a request)
        row_bytes, request_rows = getattr(source, "row_bytes", 0), getattr(source, "batch_rows", request_rows)
    if row_bytes * window_rows <= _WINDOW_BYTES:
        return None
    return max(1, _WINDOW_BYTES // (row_bytes * request_rows))


@contextlib.contextmanager
def _writing_to(output: Path) -> Iterator[None]:
    """An error writing the answers (a full disk, a quota, a file size limit) names OUTPUT: it said only
    "[Errno 28] No space left on device", which could as well have been the input's disk."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:  # (a write or fsync names no file; a rename names both)
            exc.add_note(f"writing the answers to {output}")
        raise


class _RowsRead:
    """The input of a ``score`` run, counting the rows ``predict_many`` reads from it (a whole array at once,
    a stream of batches as it is read)."""

    def __init__(self, source: Any) -> None:
        self.rows = 0
        self.source: Any
        if isinstance(source, (np.ndarray, Mapping)):
            self.rows = rows_of(source)
            self.source = source
        else:
            self.source = self._counted(source)

    def _counted(self, batches: Iterable[Any]) -> Iterator[Any]:
        for batch in batches:
            self.rows += rows_of(batch)
            yield batch


def _answered_rows(answer: Mapping[str, Any], model: str, server: Server, version: int | None) -> int:
    """The rows of one answer, which every output must agree on: ``score`` writes one output row per input row.

    Raises:
        InvalidInputError: the outputs answer different rows (the model's axis 0 is not the rows of each).
    """
    counts = {name: len(value) for name, value in answer.items() if not isinstance(value, np.ndarray) or value.ndim}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{count} of {name!r}" for name, count in counts.items())
        raise _not_row_per_row(model, server, version, f"an answer of {listed} rows")
    return next(iter(counts.values()), 0)


def _not_row_per_row(model: str, server: Server, version: int | None, what: str) -> InvalidInputError:
    """The error for a model whose answers have no row per input row, which its declared shapes did not show
    (an output named after the batch axis that a model cuts or fills: a written file's rows would no longer
    line up with the input's). It names what the load found, where it found something."""
    routes = server._routes[model]
    target = routes.default if version is None else routes.versions.get(version)
    why = None if target is None else target.why_unbatchable()
    found = f" (the load found: {why})" if why else ""
    return InvalidInputError(
        f"model {model!r} does not answer one row per input row: {what}{found}; the score command writes one "
        "output row per input row, so nothing was written: call server.predict_many (or predict) from Python "
        "for such a model"
    )


def _loaded(server: Server, model: str, version: int | None, batch_rows: int | None) -> tuple[Signature, int, int]:
    """The signature of the version that will answer, the rows to read from a streamed file at a time (one
    request of ``predict_many``'s plan: the command is part of the library, so it may look at the loaded
    version), and the rows that plan keeps in flight.

    Raises:
        ValueError: ``batch_rows`` is not a positive int, or more than one request may carry.
    """
    routes = server._routes[model]
    target = routes.default if version is None else routes.versions.get(version)
    if target is None:
        raise server._not_found(model, version)
    assert target.signature is not None
    if batch_rows is not None:  # (said here in the command's words: predict_many's speak of its batch_rows)
        fix, hint = "drop --batch-rows", ""
        natural = plan_for_version(target, batch_rows=None, max_in_flight=None, timeout_s=None)
        if natural.exact_rows is not None and batch_rows != natural.exact_rows:
            exact = natural.exact_rows
            refusal = (
                f"takes exactly {exact} row{'s' if exact > 1 else ''} per run (its file fixes axis 0 of every "
                f"input and output), so rows are sent {exact} at a time"
            )
        elif natural.chunk_rows is None:
            why = target.why_unbatchable() or "its answers have no row per input row"
            refusal = f"takes a whole input as one request ({why}), so it cannot be cut into chunks"
            if natural.exact_rows is None and target.signature.rows_beside_values():
                hint = BESIDE_VALUES_HINT  # (only here: a model cut into chunks already was told so, or needs not)
        elif batch_rows > (limit := target.config.batching.request_row_limit):
            # (said by predict_many as "batch_rows=5000 is more than ...": no flag of this command, no limit)
            refusal = f"takes at most {limit} rows per request (batching.max_request_rows, else max_queue_rows)"
            fix = f"give --batch-rows {limit} or less, or drop it"
        else:
            refusal = None
        if refusal is not None:
            raise ValueError(
                f"--batch-rows {batch_rows}: model {model!r} version {target.version} {refusal}; {fix}{hint}"
            )
    plan = plan_for_version(target, batch_rows=batch_rows, max_in_flight=None, timeout_s=None)
    rows = plan.request_rows or plan.chunk_rows or target.config.batching.max_batch_size
    if plan.exact_rows is not None:  # (a block is cut into requests of those rows, and its answers joined back)
        rows = plan.exact_rows * max(1, SCORING_RUN_ROWS // plan.exact_rows)
    return target.signature, rows, plan.window_rows


def _stopped(interruption: BaseException, output: str) -> int:
    """Stopped from outside: the temporary file is gone and OUTPUT untouched; one line, not a traceback."""
    stop = interruption.signum if isinstance(interruption, Terminated) else signal.SIGINT
    with contextlib.suppress(OSError):  # (a hangup closed the terminal: the line has nowhere to go)
        print(f"error: stopped by {stop.name} before every row was scored; {output} was not written", file=sys.stderr)
    return 128 + stop.value  # what a shell reports for a command ended by that signal


def run_score(args: argparse.Namespace) -> int:
    """The ``score`` subcommand: 0 when every row was scored and written; 1 when the model or a row could not
    be scored; 2 when it could not run (MODEL, INPUT or OUTPUT's folder missing, a file format it does not
    know, OUTPUT is a folder or INPUT, a --name or --version that MODEL, a file, contradicts); 130, 143 or 129
    when stopped by SIGINT (Ctrl-C), SIGTERM or SIGHUP (a dropped ssh session; OUTPUT untouched, no temporary
    file left)."""
    started = time.perf_counter()
    for path, what in ((Path(args.model), "MODEL"), (Path(args.input), "INPUT")):
        if not path.exists():
            print(f"error: {what} {path} does not exist", file=sys.stderr)
            return 2
    if not Path(args.output).parent.is_dir():  # (found only once the model had loaded: exit 1, after minutes)
        print(f"error: OUTPUT's folder {Path(args.output).parent} does not exist; create it first", file=sys.stderr)
        return 2
    try:
        _check_paths(Path(args.input), Path(args.output))
        _check_selection(Path(args.model), args.name, args.version)
    except InvalidInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with unwind_on_sigterm():
            rows = score_file(
                args.model,
                args.input,
                args.output,
                name=args.name,
                version=args.version,
                batch_rows=args.batch_rows,
                progress=not args.quiet,
            )
    except (KeyboardInterrupt, Terminated) as exc:
        return _stopped(exc, args.output)
    except Exception as exc:
        interruption = interrupted_by(exc)  # (the signal's exception made into another on its way out)
        if interruption is not None:
            return _stopped(interruption, args.output)
        if not isinstance(exc, InprocserveError | ValueError | OSError):
            raise
        notes = "".join(f" ({note})" for note in getattr(exc, "__notes__", ()))
        print(f"error: {exc}{notes}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    if not args.quiet:
        print(
            f"scored {rows:,} rows in {seconds:.2f}s ({rows / seconds:,.0f} rows/s) -> {args.output}", file=sys.stderr
        )
    return 0
