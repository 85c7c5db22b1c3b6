"""Input and output drift: compare what a model version sees now with a reference distribution.

Per numeric feature (each column of each input, and of each output), a reference sample — from a file in
the model folder, or captured from the first requests — defines decile bins, plus one bin for non-finite
values (NaN, infinity), so a window whose share of missing values changes is scored like any other shift.
A value that fills more than one decile (the 0 of a sparse flag or count) gets a bin of its own.
The monitored columns (at most ``max_features``) are chosen once, when the reference is loaded or when the
first request arrives for a captured one; each request only copies those columns. Requests are gathered
into tumbling windows of ``window`` rows; each full window is scored on a background thread, never on the
request path (a :class:`DriftScorer`, which the server starts and closes), with the population stability
index (PSI) and, for continuous features, the two-sample Kolmogorov-Smirnov statistic. A window whose PSI
(or KS) crosses the threshold marks the version as drifting; a version that starts drifting is logged
at once, and then at most every ``DRIFT_REPEAT_S`` while it keeps drifting (a window of 1,000 rows fills
several times a second under load: one warning per window flooded the logs), and once when it stops. The
scorer queues a
bounded number of windows: when it falls behind, further windows are dropped and counted.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np

from . import _fork
from ._array_file import UnreadableArrayFileError, load_arrays
from ._config import DriftConfig
from ._errors import ModelLoadError
from ._integrity import resolve_model_file
from ._log_limit import LogLimit, since
from ._weak_members import WeakMembers

__all__ = ["DriftMonitor", "DriftScorer", "drain", "ks_statistic", "psi"]

logger = logging.getLogger(__name__)

_EPSILON = 1e-4  # floor for empty bins, so PSI stays finite
_CONTINUOUS_ABOVE = 20  # features with more distinct reference values than this get a KS statistic
_MAX_QUEUED_WINDOWS = 8  # windows waiting for the scoring thread, per server; more are dropped and counted
DRIFT_REPEAT_S = 600.0  # while a version keeps drifting, its warning is repeated at most this often

_REPLAYING: ContextVar[bool] = ContextVar("inprocserve_drift_replaying", default=False)


@contextlib.contextmanager
def replaying() -> Iterator[None]:
    """Requests this thread makes inside are not traffic (guarded promotion re-running recent inputs on the
    stable version and the candidate): drift monitoring leaves them out. A synchronous ``predict`` feeds drift
    on its caller's thread, where this applies."""
    token = _REPLAYING.set(True)
    try:
        yield
    finally:
        _REPLAYING.reset(token)


def is_replaying() -> bool:
    """Whether this thread is inside :func:`replaying`."""
    return _REPLAYING.get()


Shape = Sequence[Any] | None  # a signature's shape: ints for fixed axes, None or a symbol for dynamic ones


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two bin-proportion vectors."""
    e = np.maximum(expected, _EPSILON)
    a = np.maximum(actual, _EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(reference_sorted: np.ndarray, sample: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs.

    Looked for at the sample's values only, at each value and just below it: between two of them the
    sample's CDF is flat and the reference's only rises, so the gap is widest at an end. This costs the
    window's rows times the log of the reference's, where evaluating both CDFs at every reference value cost
    the reference's rows: 11 s a window for 64 features against a reference of a million rows."""
    sample = np.sort(sample)
    size = reference_sorted.size
    above = np.searchsorted(sample, sample, side="right") / sample.size - (
        np.searchsorted(reference_sorted, sample, side="right") / size
    )
    below = np.searchsorted(reference_sorted, sample, side="left") / size - (
        np.searchsorted(sample, sample, side="left") / sample.size
    )
    return float(max(np.max(above), np.max(below)))


def _numeric(array: Any) -> bool:
    return isinstance(array, np.ndarray) and array.dtype.kind in "biuf" and array.ndim > 0


class _Column:
    """One monitored input or output: which of its columns are copied from each request, and their names."""

    __slots__ = ("features", "key", "name", "output", "trailing")

    def __init__(self, name: str, *, output: bool, trailing: tuple[int, ...], flat: list[int], prefix: str) -> None:
        self.name = name
        self.output = output
        self.trailing = trailing  # a request's shape past the rows must be this one to be sliced
        if not trailing:  # a 1-D array: one feature, named like the array
            self.key: tuple[Any, ...] | None = None
            self.features = [f"{prefix}{name}"]
        else:  # advanced indexing: copies just these columns, never the whole (maybe huge) array
            self.key = (slice(None), *np.unravel_index(np.asarray(flat, dtype=np.intp), trailing))
            self.features = [f"{prefix}{name}[{column}]" for column in flat]

    def take(self, array: np.ndarray) -> np.ndarray:
        """The monitored columns of ``array``: a (rows, features) copy."""
        if self.key is None:
            return array.reshape(-1, 1).copy()
        taken: np.ndarray = array[self.key]
        return taken


def _choose_columns(
    sources: Sequence[tuple[bool, Mapping[str, Any], Sequence[str]]],
    limit: int,
    usable: Callable[[np.ndarray], bool] | None = None,
) -> tuple[list[_Column], list[str]]:
    """The first ``limit`` numeric columns of the inputs, then the outputs (those ``usable`` accepts when
    given), and the names of the columns it refused."""
    columns: list[_Column] = []
    refused: list[str] = []
    budget = limit
    for output, arrays, names in sources:
        prefix = "output:" if output else ""
        for name in names:
            array = arrays.get(name)
            if budget <= 0:
                return columns, refused
            if not isinstance(array, np.ndarray) or not _numeric(array):
                continue
            trailing = tuple(int(d) for d in array.shape[1:])
            flat = array.reshape(array.shape[0], -1) if usable is not None else None
            chosen: list[int] = []
            for index in range(math.prod(trailing)):
                if len(chosen) >= budget:
                    break
                if flat is not None and usable is not None and not usable(flat[:, index]):
                    refused.append(f"{prefix}{name}" if not trailing else f"{prefix}{name}[{index}]")
                    continue
                chosen.append(index)
            if chosen:
                columns.append(_Column(name, output=output, trailing=trailing, flat=chosen, prefix=prefix))
                budget -= len(chosen)
    return columns, refused


def _has_finite(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).any())


def _bin_edges(quantiles: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Bin edges from a reference's quantiles (``reference``: its finite values, sorted): the distinct
    quantiles, and around each one that repeats, a bin of its own.

    A quantile that repeats is a value holding at least about a bin's share of the reference (the 0 of a
    flag that is 5 % ones, of a count that is mostly 0, an imputed mean). With the distinct quantiles alone,
    that value and everything above it share one bin, so a window where every row moved above it scores PSI
    0. So the value ``v`` gets the bin ``[v - d, v + d)``, with ``d`` a millionth of ``v`` (at most half the
    way to the reference's next value either side; 0 gets ``[0, 0]``): wide enough that the same value
    rounded to float32 (a float64 reference file against a float32 model input) stays in it. Distinct
    quantiles (continuous features, values without a bin's share) keep the bins they had."""
    distinct, counts = np.unique(quantiles, return_counts=True)
    atoms = distinct[counts > 1]
    if not atoms.size:
        return distinct
    edges = [float(edge) for edge in distinct if edge not in atoms]
    for atom in atoms.tolist():
        at, past = np.searchsorted(reference, atom, side="left"), np.searchsorted(reference, atom, side="right")
        spread = abs(atom) * _ATOM_SPREAD
        below = spread if at == 0 else min(spread, (atom - float(reference[at - 1])) / 2)
        above = spread if past == reference.size else min(spread, (float(reference[past]) - atom) / 2)
        edges.append(atom - below)
        # (0, and values too small for a float32 rounding to move: the next float up closes the bin)
        edges.append(atom + above if above > 0 else float(np.nextafter(atom, np.inf)))
    return np.unique(np.array(edges, dtype=np.float64))


def _sorted_quantiles(ordered: np.ndarray, bins: int) -> np.ndarray:
    """The inner ``bins``-quantiles of sorted values, as ``np.quantile`` computes them (linear), without its
    partition of the whole array."""
    if not ordered.size:
        return np.array([])
    position = np.linspace(0, 1, bins + 1)[1:-1] * (ordered.size - 1)
    below = np.floor(position).astype(np.intp)
    above = np.minimum(below + 1, ordered.size - 1)
    low, high, weight = ordered[below], ordered[above], position - below
    # (numpy's own interpolation: from the nearer end, so that equal neighbours give that value exactly)
    quantiles: np.ndarray = np.where(weight < 0.5, low + (high - low) * weight, high - (high - low) * (1 - weight))
    return quantiles


# A reference's sorted values are kept for the KS statistic, which reads them as a CDF. Past this many, evenly
# spaced order statistics stand for them: the CDF read from them is off by at most about 1/_KEPT_ORDER_STATISTICS
# (3e-5, where a KS threshold is 0.1 or so), and a reference of a million rows of 64 features holds 16 MiB
# for it instead of 512 MiB, in every worker, for each version.
_KEPT_ORDER_STATISTICS = 2**15


def _thinned(ordered: np.ndarray) -> np.ndarray:
    if ordered.size <= _KEPT_ORDER_STATISTICS:
        return ordered
    ranks = np.linspace(0, ordered.size - 1, _KEPT_ORDER_STATISTICS).round().astype(np.intp)
    kept: np.ndarray = ordered[ranks]  # (a copy: the whole sorted array is freed)
    return kept


_ATOM_SPREAD = 2.0**-20  # relative: float32 keeps 24 bits, so a value rounded to it moves by at most 2**-24


class _Feature:
    __slots__ = ("continuous", "edges", "expected", "nonfinite", "reference", "rows")

    def __init__(self, values: np.ndarray, bins: int) -> None:
        self.rows = values.size  # (its missing values too)
        finite = np.isfinite(values)
        self.nonfinite = float(1.0 - finite.mean()) if values.size else 0.0
        # One sort, and everything else read from the sorted values: the quantiles, the bins' shares and the
        # distinct values each cost another pass over the reference (a sort, a partition), which made a
        # reference of a million rows of 64 features take half a minute to load.
        ordered = np.sort(values[finite])
        self.edges = _bin_edges(_sorted_quantiles(ordered, bins), ordered)
        self.expected = self._sorted_proportions(ordered, self.nonfinite)
        self.continuous = (
            ordered.size > 0 and int(np.count_nonzero(ordered[1:] != ordered[:-1])) + 1 > _CONTINUOUS_ABOVE
        )
        self.reference = _thinned(ordered)

    def _sorted_proportions(self, ordered: np.ndarray, nonfinite: float) -> np.ndarray:
        """:meth:`proportions` of sorted finite values, found by looking up the edges in them."""
        below = np.searchsorted(ordered, self.edges, side="left")  # values under each edge
        counts = np.diff(below, prepend=0, append=ordered.size)
        shares = counts / max(1, ordered.size) * (1.0 - nonfinite)
        return np.append(shares, nonfinite)

    def proportions(self, finite_values: np.ndarray, nonfinite: float) -> np.ndarray:
        """Bin shares of a sample: its finite values in the reference's bins, then its non-finite share."""
        counts = np.bincount(np.searchsorted(self.edges, finite_values, side="right"), minlength=self.edges.size + 1)
        shares = counts / max(1, finite_values.size) * (1.0 - nonfinite)
        return np.append(shares, nonfinite)


def _shape_text(shape: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) and d >= 0 else "?" for d in shape) + "]"


def _fits(found: tuple[int, ...], expected: Sequence[Any]) -> bool:
    """``found`` (a reference array's shape) has the rank and fixed sizes past axis 0 of ``expected``."""
    if len(found) != len(expected):
        return False
    return all(
        not (isinstance(d, int) and d >= 0) or d == size for d, size in zip(expected[1:], found[1:], strict=True)
    )


_Record = tuple[np.ndarray | None, ...]  # one request: the monitored columns of each _Column, None if absent
_Entry = tuple[_Record, int]  # a record and its rows


def _split(record: _Record, at: int) -> tuple[_Record, _Record]:
    """The first ``at`` rows of ``record``, and the rest (views of its copy): a request across a window's end
    is split in two, so a window holds exactly its rows and the request's other rows go to the next one."""
    return (
        tuple(None if block is None else block[:at] for block in record),
        tuple(None if block is None else block[at:] for block in record),
    )


class DriftMonitor:
    """Drift state of one model version. Thread-safe: ``observe`` is called from request threads.

    ``input_shapes`` and ``output_shapes`` (the signature's shapes by name) let a reference file be checked
    against the model when it is loaded: a reference whose arrays do not have the inputs' shapes fails the load.
    ``dtypes`` (the signature's numpy dtypes by name, ``None`` for a value that is not a tensor) lets a
    reference file be read as requests are: an array named after a text input or a non-tensor output (ZipMap's
    maps) is left out, since the requests' values could not be scored against it, and a float reference is
    rounded to a float input's or output's precision (a float64 file for a float32 model), as requests are.
    """

    def __init__(
        self,
        config: DriftConfig,
        *,
        model: str,
        version: int,
        inputs: list[str],
        outputs: list[str],
        folder: Path,
        input_shapes: Mapping[str, Shape] | None = None,
        output_shapes: Mapping[str, Shape] | None = None,
        dtypes: Mapping[str, np.dtype[Any] | None] | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.version = version
        self._inputs = inputs
        self._outputs = outputs
        self._input_shapes = dict(input_shapes or {})
        self._output_shapes = dict(output_shapes or {})
        self._dtypes = dict(dtypes or {})
        self._lock = threading.Lock()
        self._columns: list[_Column] | None = None  # chosen once: at load (file) or on the first request
        self._pending: list[_Entry] = []
        self._pending_rows = 0
        self._features: dict[str, _Feature] | None = None
        self._capture: list[_Entry] = []
        self._captured_rows = 0
        self._unkept_rows = 0  # rows past the one window kept while a captured reference is built
        self._mismatched: set[str] = set()
        self.windows = 0
        self.dropped_windows = 0
        self.last: dict[str, dict[str, float]] = {}
        self.drifting = False
        self._said = LogLimit(DRIFT_REPEAT_S)  # when the drifting warning is due (see _say)
        _fork.register(self)
        if config.reference_file:
            path = resolve_model_file(
                folder, config.reference_file, what="drift reference file", model=model, version=version
            )
            self._features = self._reference_from_file(path)

    def _after_fork_in_child(self) -> None:
        """A forked child (a worker of a server built, and used, before the fork) starts with a lock of its
        own: a request thread of the parent noting its rows at the instant of the fork held it for good here,
        and the child's first request, which feeds drift once answered, hung on it. A capture handed to the
        parent's scoring thread is started over: the child's scorer has none of the parent's queue, and the
        reference was never built here (every window was dropped, for the worker's life). So are the open
        window and a capture under way, when a thread of the parent was changing them."""
        whole = self._lock.acquire(blocking=False)
        if whole:
            self._lock.release()
        self._lock = threading.Lock()
        if not whole:
            self._pending, self._pending_rows = [], 0
        if self._features is None and (not whole or self._captured_rows >= self.config.capture_reference):
            self._capture, self._captured_rows, self._unkept_rows = [], 0, 0
            self._pending, self._pending_rows = [], 0

    def _fail(self, message: str) -> ModelLoadError:
        return ModelLoadError(
            f"model {self.model!r} version {self.version}: {message}", model=self.model, version=self.version
        )

    def _only_input(self, path: Path) -> str:
        """The input a ``.npy`` reference (one array, no name) stands for: the model's only one."""
        if len(self._inputs) != 1:
            raise self._fail(
                f"drift reference {path} holds one array, and the model has {len(self._inputs)} inputs: save "
                "one array per input (and output) with np.savez(path, name=array, ...)"
            )
        return self._inputs[0]

    def _reference_from_file(self, path: Path) -> dict[str, _Feature]:
        pickled: list[str] = []
        try:
            loaded = load_arrays(path, pickled=pickled)
        except UnreadableArrayFileError as exc:
            raise self._fail(f"drift reference {path} cannot be read: {exc}") from exc
        if "" in pickled:  # a .npy (np.save) of an object array: one array, for a model of one input
            pickled = [self._only_input(path)]
        # An object array (pandas' .values of a text column: a LabelEncoder's string labels) is never unpickled;
        # named after text or maps, which drift does not watch, it is left out as a numeric one is below: it
        # failed the version's load, so the model did not serve at all.
        wanted = [name for name in pickled if name in (*self._inputs, *self._outputs) and not self._not_numeric(name)]
        if wanted:
            raise self._fail(
                f"drift reference {path}: array {wanted[0]!r} holds Python objects (an object array), never "
                "unpickled; save it as numbers (array.astype(np.float32))"
            )
        if isinstance(loaded, np.ndarray):  # a .npy (np.save): one array, for a model of one input
            arrays = {self._only_input(path): loaded}
        else:
            arrays = loaded
        # A numeric reference for a text input (or a ZipMap output) cannot be compared with what requests carry:
        # kept, the requests' text failed every window's scoring, for every feature.
        unusable = sorted(
            [name for name in arrays if self._not_numeric(name) and _numeric(arrays[name])]
            + [name for name in pickled if self._not_numeric(name)]
        )
        if unusable:
            logger.warning(
                "model %r version %s: drift leaves out %s of reference %s: the model takes or gives text or maps "
                "there, not numbers (drift watches numeric inputs and outputs)",
                self.model,
                self.version,
                ", ".join(unusable),
                path.name,
            )
            arrays = {name: array for name, array in arrays.items() if name not in unusable}
        for kind, names, shapes in (
            ("input", self._inputs, self._input_shapes),
            ("output", self._outputs, self._output_shapes),
        ):
            for name in names:
                array, expected = arrays.get(name), shapes.get(name)
                if not isinstance(array, np.ndarray) or expected is None or not _numeric(array):
                    continue  # (text is not monitored: its shape is not checked either)
                if not _fits(array.shape, expected):
                    raise self._fail(
                        f"drift reference {path}: {kind} {name!r} has shape {list(array.shape)}, expected "
                        f"{_shape_text(expected)} (rows first, like the model's {kind})"
                    )
        sources = [(False, arrays, self._inputs), (True, arrays, self._outputs)]
        columns, refused = _choose_columns(sources, self.config.max_features, _has_finite)
        self._log_refused(refused, f"reference {path.name}")
        if not columns:
            if refused:
                raise self._fail(f"drift reference {path} has no finite values for any feature")
            if unusable:  # (said above) left out, not fatal: it loaded before, and drift watches nothing here
                self._columns = []
                return {}
            present = [name for name in [*self._inputs, *self._outputs] if isinstance(arrays.get(name), np.ndarray)]
            if present:  # named right, but text or without rows: nothing drift can watch
                found = ", ".join(f"{name}: {arrays[name].dtype} {list(arrays[name].shape)}" for name in present)
                raise self._fail(
                    f"drift reference {path} holds no numeric array with a row per sample ({found}); drift "
                    "watches numeric inputs and outputs, rows first"
                )
            raise self._fail(
                f"drift reference {path} holds none of the model's inputs or outputs "
                f"({', '.join(self._inputs + self._outputs)})"
            )
        self._columns = columns
        record = tuple(self._as_served(column.name, column.take(arrays[column.name])) for column in columns)
        stacked = self._stack([(record, 0)])
        features = {name: _Feature(values, self.config.bins) for name, values in stacked.items()}
        self._warn_if_noisy(features, f"reference {path.name}")
        self._warn_if_missing_cannot_be_served(columns, features, path.name)
        return features

    def _warn_if_missing_cannot_be_served(
        self, columns: list[_Column], features: Mapping[str, _Feature], file: str
    ) -> None:
        """Warn about NaN in a reference column of an integer or boolean input or output (pandas writes an
        integer column with missing values as float64): requests cannot carry NaN there, so the reference's
        non-finite share alone reads as drift in every window."""
        found: list[tuple[str, float]] = []
        for column in columns:
            dtype = self._dtypes.get(column.name)
            if dtype is None or dtype.kind not in "biu":
                continue
            found.extend((name, features[name].nonfinite) for name in column.features if features[name].nonfinite)
        if not found:
            return
        name, share = max(found, key=lambda item: item[1])
        floor = psi(np.array([share]), np.array([0.0]))
        logger.warning(
            "model %r version %s: drift reference %s holds NaN or infinity for %s, integers or booleans in the "
            "model, which requests cannot carry: every window reads a PSI of at least %.2f from that alone (%s: "
            "%.1f %% of rows); fill them in the reference as they are filled before the model",
            self.model,
            self.version,
            file,
            ", ".join(feature for feature, _ in found[:10])
            + (f" and {len(found) - 10} more" if len(found) > 10 else ""),
            floor,
            name,
            100 * share,
        )

    def _warn_if_noisy(self, features: Mapping[str, _Feature], where: str) -> None:
        """Warn when the reference or the window is too small for the PSI threshold: a window drawn from the
        reference's own distribution reads a PSI of about ``(bins - 1) * (1 / reference + 1 / window)`` by
        chance, and a version drifts when any one feature is over the threshold. A reference of 30 rows (or a
        window of 100) made every window of unchanged data drift, with nothing saying why."""
        # (of all rows: a feature missing in 99 % of them has its finite bins' shares, and their chance
        # errors, at 1 % of the rows; counted by its finite values alone, a reference of 20,000 rows was
        # said to be of 218 rows, and to drift by chance, where its windows read a PSI of 0.01)
        rows = min((feature.rows for feature in features.values()), default=0)
        if not rows:
            return
        config = self.config
        chance = (config.bins - 1) * (1 / rows + 1 / config.window)
        if chance <= config.psi_threshold / 4:
            return
        enough = math.ceil(8 * (config.bins - 1) / config.psi_threshold)
        logger.warning(
            "model %r version %s: drift windows of %d rows against the %s of %d rows read a PSI of about %.2f by "
            "chance alone (%d bins; psi_threshold %s), so the version may read as drifting without any shift: "
            "use a reference and a window of at least %d rows each, or fewer bins",
            self.model,
            self.version,
            config.window,
            where,
            rows,
            chance,
            config.bins,
            config.psi_threshold,
            enough,
        )

    def _not_numeric(self, name: str) -> bool:
        """``name`` is an input or output that is not a numeric tensor (text, ZipMap's maps)."""
        if name not in self._dtypes:
            return False
        dtype = self._dtypes[name]
        return dtype is None or dtype.kind not in "biuf"

    def _as_served(self, name: str, values: np.ndarray) -> np.ndarray:
        """A reference's values in the precision requests reach drift with: a float64 reference of a float32
        input is rounded to float32. Compared unrounded, a value the reference holds often (a mean imputed for
        12-19 % of rows) sat on a decile edge in float64 and just below it in every float32 request: each
        window read as drift (PSI 0.4-1.5), and the KS statistic as large as the value's share. So is an integer
        reference (requests' integers are rounded too: an imputed 2501 reached a float16 input as 2500, and
        each window read PSI 0.6). A value past the input's range stays as it is: a request holding one is
        refused, not served as infinity (made infinite, 5 % of such rows read as drift: PSI 0.3)."""
        dtype = self._dtypes.get(name)
        if dtype is None or dtype.kind != "f" or values.dtype.kind not in "biuf" or values.dtype == dtype:
            return values
        with np.errstate(over="ignore"):
            served = values.astype(dtype)
        beyond = np.isinf(served) & np.isfinite(values)
        return np.where(beyond, values, served) if beyond.any() else served

    def _log_refused(self, refused: list[str], where: str) -> None:
        if refused:
            shown = ", ".join(refused[:10]) + (f" and {len(refused) - 10} more" if len(refused) > 10 else "")
            logger.warning(
                "model %r version %s: drift ignores %d feature(s) with no finite value in the %s: %s",
                self.model,
                self.version,
                len(refused),
                where,
                shown,
            )

    def _record(
        self, columns: list[_Column], arrays: Mapping[str, Any], outputs: Mapping[str, Any], rows: int | None
    ) -> _Record:
        """Copies of the monitored columns of one request (the caller may reuse its buffers): of its first
        ``rows`` rows only, when given."""
        record: list[np.ndarray | None] = []
        for column in columns:
            array = (outputs if column.output else arrays).get(column.name)
            if array is None or array.shape[1:] != column.trailing:
                record.append(None)
                if array is not None and column.name not in self._mismatched:
                    self._mismatch(column, array)
                continue
            record.append(column.take(array if rows is None else array[:rows]))
        return tuple(record)

    def _mismatch(self, column: _Column, array: Any) -> None:
        self._mismatched.add(column.name)
        logger.warning(
            "model %r version %s: drift skips %s %r in requests shaped %s: the reference has %s past the rows",
            self.model,
            self.version,
            "output" if column.output else "input",
            column.name,
            list(getattr(array, "shape", ())),
            list(column.trailing),
        )

    def observe(self, arrays: Mapping[str, Any], outputs: Mapping[str, Any], rows: int, *, scorer: DriftScorer) -> None:
        """Note one answered request (copies only the monitored columns); full windows are scored on ``scorer``.

        Windows are exactly ``window`` rows: a request's rows fill the open window and the rest open the next
        ones. One request copies at most the windows the scorer can queue (while a reference is captured: the
        rows the capture still needs and one window): its further rows are not copied, and the windows they would fill
        are counted as dropped, so a request of a million rows costs no more than a few windows. Requests
        made inside :func:`replaying` are left out."""
        if _REPLAYING.get():
            return
        columns = self._columns
        if columns is None:  # a captured reference: the first request decides which columns are monitored
            with self._lock:
                if self._columns is None:
                    sources = [(False, arrays, self._inputs), (True, outputs, self._outputs)]
                    self._columns = _choose_columns(sources, self.config.max_features)[0]
                columns = self._columns
        config = self.config
        taken = rows
        if rows > config.window:  # (a request of a window or less is never cut short)
            taken = min(rows, self._most_rows())
        record = self._record(columns, arrays, outputs, taken if taken < rows else None)
        if record and all(column is None for column in record):  # shaped unlike the reference: nothing to count
            return
        with self._lock:  # the common case: the open window takes the whole request, and stays open
            if self._features is not None and self._pending_rows + taken < config.window:
                self._pending.append((record, taken))
                self._pending_rows += taken
                return
        left = taken  # this request's rows not placed yet
        captured: list[_Entry] | None = None
        windows: list[list[_Entry]] = []
        with self._lock:
            if self._features is None:
                need = config.capture_reference - self._captured_rows
                if need > 0:  # the capture takes the rows it still needs, the rest open the first window
                    took = min(need, left)
                    head, record = _split(record, took) if took < left else (record, record)
                    self._capture.append((head, took))
                    self._captured_rows += took
                    left -= took
                    if self._captured_rows >= config.capture_reference:
                        captured, self._capture = self._capture, []
                # The reference is being built on the background thread: never start another; these rows open
                # the first window, scored once the reference is ready (at most one window is kept).
                kept = min(config.window - self._pending_rows, left)
                if kept > 0:
                    self._pending.append((_split(record, kept)[0] if kept < left else record, kept))
                    self._pending_rows += kept
                # The rest (and a huge request's rows past ``taken``) were dropped without a trace: counted as
                # the windows they would have filled, here as they fill them, the last partial one when the
                # reference is ready (see _finish_capture).
                self._count_unkept(left - kept + rows - taken)
            else:
                # Only this request is split, never the open window's other requests: walked under the lock,
                # a window of 100,000 one-row requests held up the request that closed it for 20-40 ms.
                while self._pending_rows + left >= config.window:
                    at = config.window - self._pending_rows
                    head, record = _split(record, at) if at < left else (record, record)
                    self._pending.append((head, at))
                    windows.append(self._pending)
                    self._pending, self._pending_rows = [], 0
                    left -= at
                if left:
                    self._pending.append((record, left))
                    self._pending_rows += left
                self.dropped_windows += (rows - taken) // config.window  # (rows left out of a huge request)
        if captured is not None and not scorer.submit(self._finish_capture, captured, bounded=False):
            self._reset_capture()  # the scorer is closed: start over rather than wait forever
        for window in windows:
            if not scorer.submit(self._score, window):
                self.window_dropped()

    def _most_rows(self) -> int:
        """The most rows of one request worth copying: those that can be kept. The scorer queues at most
        :data:`_MAX_QUEUED_WINDOWS` windows, so one request fills at most that many (a ninth was copied, split
        and refused by the scorer: 12 % more copying for nothing on every huge request). While a reference is
        captured, no window is queued: the rows the capture takes and one open window are all that is kept
        (eight more windows were copied and dropped). Rows past this are counted as dropped windows as before.
        """
        config = self.config
        if self._features is None:
            return config.capture_reference + config.window
        return config.window * _MAX_QUEUED_WINDOWS

    def _count_unkept(self, rows: int) -> None:
        """Count ``rows`` that came while the captured reference was built and were not kept: each window they
        fill is a dropped window (under the lock)."""
        window = self.config.window
        before = self._unkept_rows
        self._unkept_rows += rows
        self.dropped_windows += self._unkept_rows // window - before // window

    def window_dropped(self) -> None:
        """A window was not scored: the scorer was behind or closed."""
        with self._lock:
            self.dropped_windows += 1

    def _reset_capture(self) -> None:
        with self._lock:
            self._capture, self._captured_rows, self._unkept_rows = [], 0, 0
            self._pending, self._pending_rows = [], 0

    def _stack(self, window: Sequence[_Entry]) -> dict[str, np.ndarray]:
        columns = self._columns
        assert columns is not None
        blocks: list[list[np.ndarray]] = [[] for _ in columns]
        for record, _ in window:
            for index, block in enumerate(record):
                if block is not None:
                    blocks[index].append(block)
        stacked: dict[str, np.ndarray] = {}
        for column, parts in zip(columns, blocks, strict=True):
            if parts:
                values = np.concatenate(parts).astype(np.float64, copy=False)
                for index, name in enumerate(column.features):
                    stacked[name] = values[:, index]
        return stacked

    def _finish_capture(self, captured: list[_Entry]) -> None:
        try:
            columns = self._stack(captured)
            usable = {name: values for name, values in columns.items() if _has_finite(values)}
            self._log_refused([name for name in columns if name not in usable], "captured reference")
            features = {name: _Feature(values, self.config.bins) for name, values in usable.items()}
            self._warn_if_noisy(features, "captured reference")
        except Exception:
            self._reset_capture()  # capture again from the next requests rather than keep rows forever
            raise
        with self._lock:
            self._features = features
            if self._unkept_rows % self.config.window:  # a window they began: the rows after this open a new one
                self.dropped_windows += 1
            self._unkept_rows = 0
            window = None
            if self._pending_rows >= self.config.window:  # rows that came while the reference was built
                window, self._pending, self._pending_rows = self._pending, [], 0
        logger.info(
            "model %r version %s: drift reference captured from the first %d rows (%d features)",
            self.model,
            self.version,
            self._captured_rows,
            len(features),
        )
        if window is not None:
            self._score(window)  # this is the background thread already

    def _score(self, window: list[_Entry]) -> None:
        features = self._features
        assert features is not None
        columns = self._stack(window)
        scores: dict[str, dict[str, float]] = {}
        for name, feature in features.items():
            values = columns.get(name)
            if values is None or not values.size:
                continue
            finite = np.isfinite(values)
            nonfinite = float(1.0 - finite.mean())
            values = values[finite]
            score = {"psi": psi(feature.expected, feature.proportions(values, nonfinite)), "nonfinite": nonfinite}
            if feature.continuous and feature.reference.size and values.size:
                score["ks"] = ks_statistic(feature.reference, values)
            scores[name] = score
        config = self.config
        drifting = [
            name
            for name, score in scores.items()
            if score["psi"] > config.psi_threshold
            or (config.ks_threshold is not None and score.get("ks", 0) > config.ks_threshold)
        ]
        with self._lock:
            self.last = scores
            self.windows += 1
            self.drifting = bool(drifting)
        self._say(drifting, scores)

    def _say(self, drifting: list[str], scores: dict[str, dict[str, float]]) -> None:
        """Log that the version drifts when it starts to, then at most every ``DRIFT_REPEAT_S`` while it keeps
        drifting (with the drifting windows not logged since), and once when it stops."""
        if not drifting:
            if self._said.ended():
                logger.info("model %r version %s is no longer drifting", self.model, self.version)
            return
        skipped = self._said.due()
        if skipped is None:
            return
        # The worst by the figure that crossed its threshold: a feature drifting by its KS statistic alone was
        # named with its PSI (under the PSI threshold), which read as no reason to drift at all.
        by_psi = [name for name in drifting if scores[name]["psi"] > self.config.psi_threshold]
        figure = "psi" if by_psi else "ks"
        worst = max(by_psi or drifting, key=lambda name: scores[name].get(figure, 0.0))
        logger.warning(
            "model %r version %s is drifting: %d feature(s) over the threshold in the last window of %d rows; "
            "worst %s (%s %.3f, threshold %s)%s",
            self.model,
            self.version,
            len(drifting),
            self.config.window,
            worst,
            figure.upper(),
            scores[worst].get(figure, 0.0),
            self.config.psi_threshold if by_psi else self.config.ks_threshold,
            since(skipped),
        )

    def status(self) -> dict[str, Any]:
        with self._lock:
            last = dict(self.last)
            return {
                "reference": "file" if self.config.reference_file else "captured",
                "reference_ready": self._features is not None,
                "windows": self.windows,
                "dropped_windows": self.dropped_windows,
                "drifting": self.drifting,
                "max_psi": max((s["psi"] for s in last.values()), default=None),
                "features": last,
                "psi_threshold": self.config.psi_threshold,
                "ks_threshold": self.config.ks_threshold,
            }

    def observations(self) -> list[tuple[str, float, dict[str, Any]]]:
        values = []
        with self._lock:
            last = dict(self.last)
        for name, score in last.items():
            attributes = {
                "inprocserve.model.name": self.model,
                "inprocserve.model.version": self.version,
                "inprocserve.drift.feature": name,
            }
            values.append(("psi", score["psi"], attributes))
            if "ks" in score:
                values.append(("ks", score["ks"], attributes))
        return values


# -- the background thread that scores windows, owned by the server that starts it ------------------------

_STOP = object()


class _Waiter:
    """One :meth:`DriftScorer.drain` call: released by the thread when it gets there (``reached``), or by
    :meth:`DriftScorer.close` when it drops the queue, so the caller does not wait out its timeout."""

    __slots__ = ("done", "reached")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reached = False


def _reach(waiter: _Waiter) -> None:
    waiter.reached = True
    waiter.done.set()


def _release_unscored(function: Any, argument: Any) -> None:
    """A job dropped by close(): a window is counted in its monitor's ``dropped_windows``, a drain() waiting
    for it is released."""
    if function is _reach:
        argument.done.set()
    elif getattr(function, "__func__", None) is DriftMonitor._score:
        function.__self__.window_dropped()


_scorers: WeakMembers[DriftScorer] = WeakMembers()  # (walked while versions load: see _weak_members)


class DriftScorer:
    """Scores the drift windows of one server's monitors on one thread, off the request path.

    Thread-safe. The thread starts lazily with the first window (again in a forked child) and
    :meth:`close` stops and joins it after the window it is scoring; the windows still queued, and those
    submitted after that, are dropped.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Any, Any, bool]] = queue.SimpleQueue()
        self._queued = 0  # bounded jobs (windows) submitted and not yet taken by the thread
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        _scorers.add(self)
        _fork.register(self)

    def submit(self, function: Callable[[Any], None], argument: Any, *, bounded: bool = True) -> bool:
        """Run ``function(argument)`` on the scoring thread; ``False`` when it is not queued: the scorer is
        closed, or (``bounded``) :data:`_MAX_QUEUED_WINDOWS` bounded jobs are already waiting."""
        with self._lock:
            if self._closed:
                return False
            if bounded:
                if self._queued >= _MAX_QUEUED_WINDOWS:
                    return False
                self._queued += 1
            self._jobs.put((function, argument, bounded))
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="inprocserve-drift", daemon=True)
                self._worker.start()
            return True

    def _work(self) -> None:
        while True:
            function, argument, bounded = self._jobs.get()
            if function is _STOP:
                return
            with self._lock:
                if bounded:
                    self._queued -= 1
                closed = self._closed
            if closed:  # taken while close() emptied the queue: dropped like the rest
                _release_unscored(function, argument)
                continue
            try:
                function(argument)
            except Exception:  # a bad window must not stop drift scoring for every other version
                logger.exception("drift scoring failed")

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every window submitted so far has been scored; ``False`` on timeout, or if closed
        (before, or while this waits: the windows ahead of it are dropped)."""
        waiter = _Waiter()
        if not self.submit(_reach, waiter, bounded=False):
            return False
        return waiter.done.wait(timeout_s) and waiter.reached

    def close(self, *, timeout_s: float = 5.0) -> None:
        """Stop the thread after the window it is scoring (idempotent). Queued windows are dropped: they are
        taken off the queue here, so the thread stops as soon as the window in hand is scored."""
        dropped: list[tuple[Any, Any, bool]] = []
        with self._lock:
            self._closed = True
            worker, self._worker = self._worker, None
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                dropped.append(job)
                if job[2]:
                    self._queued -= 1
            if worker is not None:
                self._jobs.put((_STOP, None, False))
        for function, argument, _ in dropped:
            _release_unscored(function, argument)
        if worker is not None and worker.is_alive() and worker is not threading.current_thread():
            worker.join(timeout=timeout_s)

    def _after_fork_in_child(self) -> None:
        self._jobs = queue.SimpleQueue()
        self._queued = 0
        self._worker = None
        self._lock = threading.Lock()


def drain(timeout_s: float = 10.0) -> bool:
    """Wait until every open scorer has scored the windows submitted so far (for tests and shutdown)."""
    return all(scorer.drain(timeout_s) for scorer in list(_scorers) if not scorer._closed)


def _stop_all() -> None:
    """At exit: stop the threads of scorers nobody closed, before the interpreter finalizes (a daemon
    thread inside numpy during finalization can crash the process)."""
    for scorer in list(_scorers):
        scorer.close()


atexit.register(_stop_all)
